#include "ckks/thread_pool.hpp"

#include <algorithm>
#include <string>

#include "ckks/random.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

namespace {
// Set while this thread runs a pool task: nested parallel_for calls then run inline, so an
// outer loop (e.g. over rotations) can use the pool while inner loops stay serial.
thread_local bool t_inside_task = false;

struct TaskScope {
  bool previous;
  TaskScope() : previous(t_inside_task) { t_inside_task = true; }
  ~TaskScope() { t_inside_task = previous; }
};
}  // namespace

std::size_t ThreadPool::max_threads() {
  const std::size_t hardware = std::thread::hardware_concurrency();
  return std::max<std::size_t>(8, 4 * hardware);
}

ThreadPool::ThreadPool(std::size_t threads) {
  // One OS thread per requested thread: an absurd count would hang the process creating them.
  if (threads > max_threads()) {
    throw ParameterError("asked for " + std::to_string(threads) + " engine threads; this machine "
                         "has " + std::to_string(std::thread::hardware_concurrency()) +
                         " hardware threads and the engine allows at most " +
                         std::to_string(max_threads()) + " (use at most that many, usually "
                         "one per core)");
  }
  made_in_fork_generation_ = fork_generation();
  const std::size_t extra = threads > 1 ? threads - 1 : 0;
  workers_.reserve(extra);
  for (std::size_t i = 0; i < extra; ++i) workers_.emplace_back([this] { worker_loop(); });
}

bool ThreadPool::forked() const { return made_in_fork_generation_ != fork_generation(); }

ThreadPool::~ThreadPool() {
  if (forked()) {
    // The threads these handles name live in the parent only.
    for (auto& w : workers_) w.detach();
    return;
  }
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::drain() {
  TaskScope scope;
  for (;;) {
    const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= count_.load()) return;
    try {
      (*body_.load())(i);
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker_loop() {
  std::size_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    drain();
    {
      std::lock_guard lock(mutex_);
      ++finished_;
    }
    done_.notify_one();
  }
}

void ThreadPool::parallel_for(std::size_t count, const std::function<void(std::size_t)>& body) {
  if (count == 0) return;
  if (workers_.empty() || count == 1 || t_inside_task || forked()) {
    for (std::size_t i = 0; i < count; ++i) body(i);
    return;
  }
  std::lock_guard call_lock(call_mutex_);
  {
    std::lock_guard lock(mutex_);
    body_.store(&body);
    count_.store(count);
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    finished_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  drain();
  std::exception_ptr error;
  {
    std::unique_lock lock(mutex_);
    // Every worker checks in for every generation, so none can still be inside drain() when
    // the next call resets the counters.
    done_.wait(lock, [&] { return finished_ == workers_.size(); });
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace fheprune::ckks
