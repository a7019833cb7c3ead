"""One packed TriLM, many threads: concurrent forwards (and generate() calls) each get exactly the result the same
call gives alone, on every inference path, with the int8 embedding/head, and through torch.compile."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from spectra_hf import TriLMForCausalLM
from spectra_hf.suite import config_for

THREADS = 4
FORWARDS = 12  # per thread
LENGTHS = (1, 2, 3, 5)  # tokens per forward: decode-like and short prefills


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory):
    torch.manual_seed(0)
    latent = TriLMForCausalLM(config_for("TriLM_1.1B", tiny=True)).eval()  # 2 scale shards
    directory = tmp_path_factory.mktemp("packed")
    latent.save_pretrained(directory, weight_format="packed")
    return directory


def inputs(vocab: int) -> list[torch.Tensor]:
    """THREADS * FORWARDS distinct inputs [1, length] of the lengths in LENGTHS."""
    generator = torch.Generator().manual_seed(1)
    return [
        torch.randint(0, vocab, (1, LENGTHS[i % len(LENGTHS)]), generator=generator) for i in range(THREADS * FORWARDS)
    ]


def run_concurrently(call, items: list) -> list:
    """`call(item)` for every item, THREADS threads each taking every THREADS-th item; results in item order.
    A barrier starts the threads together, and a 1 us switch interval makes the interpreter hand the GIL from
    thread to thread between almost any two Python lines, so that the calls interleave everywhere they can."""
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(first: int) -> None:
        try:
            barrier.wait()
            for index in range(first, len(items), THREADS):
                results[index] = call(items[index])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    if errors:
        raise errors[0]
    return results


def assert_concurrent_equals_sequential(call, items: list) -> None:
    sequential = [call(item) for item in items]
    concurrent = run_concurrently(call, items)
    mismatched = [i for i, (a, b) in enumerate(zip(sequential, concurrent, strict=True)) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} of {len(items)} concurrent results differ from the sequential ones"


@pytest.mark.parametrize(
    "path, int8_embeddings",
    [("2bit", False), ("2bit", True), ("int4", False), ("int8", False), ("dense", False)],
)
def test_concurrent_forwards_equal_sequential_ones(packed_dir, path: str, int8_embeddings: bool) -> None:
    model = TriLMForCausalLM.from_pretrained(packed_dir, ternary_inference=path, int8_embeddings=int8_embeddings)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids).logits

    assert_concurrent_equals_sequential(forward, inputs(model.config.vocab_size))


def test_concurrent_forwards_with_grad_mode_on_equal_sequential_ones(packed_dir) -> None:
    """Grad mode on (as a user calls a model without no_grad): the 2-bit path then runs per layer."""
    model = TriLMForCausalLM.from_pretrained(packed_dir, ternary_inference="2bit")
    assert_concurrent_equals_sequential(lambda ids: model(ids).logits.detach(), inputs(model.config.vocab_size)[:24])


@pytest.mark.slow
def test_concurrent_compiled_forwards_equal_sequential_ones(packed_dir) -> None:
    """The compiled 2-bit route (one graph per input length, compiled before the threads start)."""
    model = TriLMForCausalLM.from_pretrained(packed_dir, ternary_inference="2bit")
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, dynamic=False, backend="aot_eager")
    items = [ids for ids in inputs(model.config.vocab_size) if ids.shape[1] in (1, 3)]

    def forward(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return compiled(ids).logits

    assert_concurrent_equals_sequential(forward, items)


def test_generate_from_several_threads_on_one_model(packed_dir) -> None:
    """generate() on one model from several threads: each thread's tokens are those of its prompt decoded alone."""
    model = TriLMForCausalLM.from_pretrained(packed_dir, ternary_inference="2bit")
    prompts = inputs(model.config.vocab_size)[: 2 * THREADS]

    def generate(ids: torch.Tensor) -> torch.Tensor:
        return model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)

    assert_concurrent_equals_sequential(generate, prompts)


# ------------------------------------------------------------------------------ native allocations and the build lock


def test_a_failed_scratch_allocation_in_the_kernel_is_a_python_error(packed_dir) -> None:
    """`set_allocation_limit(bytes)` (a testing hook of the C++ operators) makes every scratch allocation above
    `bytes` fail as an out-of-memory would: the forward raises a RuntimeError naming it, and works again after."""
    from spectra_hf.modeling import ternary_kernels

    kernel = ternary_kernels.cpu_kernel()
    if kernel is None:
        pytest.skip(f"CPU kernel: {ternary_kernels.cpu_kernel_status()}")
    model = TriLMForCausalLM.from_pretrained(packed_dir, ternary_inference="2bit", int8_embeddings=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 7))
    with torch.no_grad():
        expected = model(ids).logits
        kernel.ops.set_allocation_limit(16)
        try:
            with pytest.raises(RuntimeError, match="out of memory allocating"):
                model(ids)
            with pytest.raises(RuntimeError, match="out of memory allocating"):
                model.lm_head(torch.randn(1, model.config.hidden_size))  # the int8 head's operator too
        finally:
            kernel.ops.set_allocation_limit(-1)
        assert torch.equal(model(ids).logits, expected)


BUILD_SCRIPT = """
import sys, time
from pathlib import Path
from spectra_hf.modeling import ternary_kernels
started = time.time()
path, seconds = ternary_kernels.build_cpu_library("portable", compiler="c++", cache_dir=Path(sys.argv[1]))
print(started, time.time(), seconds is not None)
"""


@pytest.mark.slow
def test_two_processes_building_the_kernel_at_once_compile_it_once(tmp_path) -> None:
    """Two processes asking for a fresh cache directory's library at the same time: one compiles it, the other waits
    on the directory's file lock and takes the finished library (a compile takes about a minute on 2 busy cores)."""
    import subprocess

    processes = [
        subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=900)[0].split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    built = [output[2] == "True" for output in outputs]
    assert sorted(built) == [False, True]  # exactly one compiled
    assert len(list(tmp_path.glob("spectra_ternary_portable_*.so"))) == 1
    waiter = outputs[built.index(False)]
    builder = outputs[built.index(True)]
    assert float(waiter[1]) >= float(builder[1]) - 1.0  # the waiter finished once the builder had
