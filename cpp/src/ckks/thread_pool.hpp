// A small fixed-size pool for data-parallel loops over RNS primes and digits.
//
// Work items are independent and exact (modular arithmetic), so results never depend on the
// thread count or on scheduling. The calling thread takes part in the work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fheprune::ckks {

class ThreadPool {
 public:
  explicit ThreadPool(std::size_t threads = 1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  std::size_t threads() const { return workers_.size() + 1; }
  // The most threads a pool may have: four per hardware thread, at least 8 (ParameterError
  // above it).
  static std::size_t max_threads();

  // Runs body(i) for every i in [0, count), spread over the pool; returns when all are done.
  // Exceptions thrown by body are rethrown here (the first one). Called from inside a task,
  // it runs serially on the calling thread.
  void parallel_for(std::size_t count, const std::function<void(std::size_t)>& body);

 private:
  void worker_loop();
  void drain();

  // After fork() the child has none of the workers (only the forking thread survives), and
  // the pool's mutex may have been held by one: a forked child runs every loop inline and
  // never touches the workers again.
  bool forked() const;

  std::vector<std::thread> workers_;
  std::uint64_t made_in_fork_generation_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<const std::function<void(std::size_t)>*> body_{nullptr};
  std::atomic<std::size_t> count_{0};
  std::atomic<std::size_t> next_{0};
  std::size_t finished_ = 0;  // workers done with the current generation
  std::size_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::mutex call_mutex_;  // one parallel_for at a time per pool
};

}  // namespace fheprune::ckks
