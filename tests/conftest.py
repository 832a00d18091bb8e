"""Shared helpers for the engine tests: thread setup, seeded inputs, client rounds, fingerprints.

Every random number comes from ``tipcore.common.seeding.generator`` (never the global torch RNG). The thread
count is 2 (the CI machine's cores); ``TIPCORE_TEST_THREADS`` overrides it. OpenMP threads wait passively
unless OMP_WAIT_POLICY says otherwise: on a machine shared with other jobs, spinning OpenMP threads made
the suite up to 10x slower (it must be set before torch loads, hence here, before any torch import).
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tipcore.federation import fl, models
from tipcore.common.seeding import generator  # noqa: E402

TEST_THREADS = int(os.environ.get("TIPCORE_TEST_THREADS", "2"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True, scope="session")
def _private_result_cache(tmp_path_factory: pytest.TempPathFactory):
    """The app's shared result cache (tipcore.explorer.result_cache) lives in a fresh directory per test session:
    tests never read results cached by an earlier session nor write under ~/.cache."""
    old = os.environ.get("TIP_CACHE_DIR")
    os.environ["TIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("result-cache"))
    yield
    if old is None:
        os.environ.pop("TIP_CACHE_DIR", None)
    else:
        os.environ["TIP_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _pin_threads():
    """Code under test may set the thread count process-wide (the app's start-up does): put it back."""
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
    yield


# ------------------------------------------------------------------------------------------ inputs

def rand_images(batch: int, seed: int = 0, stage: str = "test-images") -> torch.Tensor:
    """[B, 3, 32, 32] images in [0, 1] from an explicit generator."""
    return torch.rand((batch, 3, 32, 32), generator=generator(seed, stage))


def make_round(model_name: str = "lenet", mode: str = "fedsgd", batch: int = 1, *,
               labels: tuple[int, ...] | None = None, seed: int = 0, local_steps: int = 2, lr: float = 1e-3,
               clip: float | None = 5.0, share_labels: bool = False, model: nn.Module | None = None,
               defense_seed: int = 0):
    """(global model, clean update, client context) for a seeded random batch."""
    model = model if model is not None else models.build(model_name, seed=seed).eval()
    x = rand_images(batch, seed)
    if labels is None:
        labels = tuple((3 + 4 * i) % 10 for i in range(batch))
    y = torch.tensor(labels, dtype=torch.long)
    cfg = fl.RoundConfig(mode=mode, batch_size=batch, local_steps=local_steps if mode == "fedavg" else 1,
                         lr=lr, clip=clip)
    update, ctx = fl.client_update(model, x, y, cfg, generator=generator(defense_seed, "defense"),
                                   share_labels=share_labels)
    return model, update, ctx


# ------------------------------------------------------------------------------------ fingerprints

def tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {k: tensor_digest(v) for k, v in tensors.items()}


def module_fingerprint(model: nn.Module) -> dict[str, object]:
    """Weights, buffers, .grad fields, training flags and hooks: everything a defense must leave alone."""
    grads = {n: None if p.grad is None else tensor_digest(p.grad) for n, p in model.named_parameters()}
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for n, m in model.named_modules()}
    return {
        "state": tensors_digest(model.state_dict()),
        "grads": grads,
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": hooks,
    }


# ---------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def resnet18_global():
    """One seeded CIFAR ResNet-18 for the session (building it costs time). Rounds, defenses and attacks
    that use it must leave it untouched; the teardown checks they did."""
    model = models.build("resnet18", seed=0).eval()
    before = module_fingerprint(model)
    yield model
    assert module_fingerprint(model) == before, "a test or the engine mutated the shared ResNet-18"
