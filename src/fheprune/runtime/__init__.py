"""The encrypted runtime: compile pruned models into packed CKKS programs, run, measure.

* :func:`compile_model` (compiler.py): torch model -> folded chain -> parameters -> Program;
* :class:`Client` / :class:`Server` (roles.py): keys, encryption and files on one side,
  ciphertext-only computation on the other;
* :func:`save_bundle` / :func:`load_bundle` (bundle.py): the program and client spec a model
  owner deploys (``fheprune serve`` serves one);
* :mod:`fheprune.runtime.cost`: counts, lower bounds and calibrated latency predictions.

The C++ core (``fheprune._core``) holds the Program, the executor and the slot simulator.
"""

from fheprune._core import (
    CompileError,
    EngineExecutor,
    Program,
    SigningKey,
    SimulatedExecutor,
    verify_signature,
)

from .bundle import Bundle, BundleError, load_bundle, save_bundle
from .compiler import CompiledModel, compile_model, fold_activations, lower_model
from .params import ParameterChoice, choose_parameters, max_levels
from .roles import Client, ClientSpec, InputRangeError, Server, SpecError

__all__ = [
    "Bundle",
    "BundleError",
    "Client",
    "ClientSpec",
    "CompileError",
    "CompiledModel",
    "EngineExecutor",
    "InputRangeError",
    "ParameterChoice",
    "Program",
    "Server",
    "SigningKey",
    "SimulatedExecutor",
    "SpecError",
    "choose_parameters",
    "compile_model",
    "fold_activations",
    "load_bundle",
    "lower_model",
    "max_levels",
    "save_bundle",
    "verify_signature",
]
