import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_lightning.diffusion import ErrorBank, ErrorInjection, inject_errors, sampling_sigmas

SHAPE = (2, 4, 3, 3)  # per-sample [C, F, H, W]


def centre(bank: ErrorBank, k: int) -> float:
    return float(bank.centres[k])


def sigmas_of(bank: ErrorBank, bins: list[int]) -> torch.Tensor:
    return torch.tensor([centre(bank, k) for k in bins])


def filled(value: float, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, *SHAPE), value)


def test_bins_are_the_shifted_sampling_grid() -> None:
    bank = ErrorBank(num_bins=50, shift=5.0)
    expected = sampling_sigmas(50, 5.0)[:-1].flip(0).double()
    torch.testing.assert_close(bank.centres, expected)
    assert bank.bin_index(bank.centres).tolist() == list(range(50))
    queries = torch.tensor([0.0, 1.0, 0.98, 0.5, 0.0931])
    nearest = [min(range(50), key=lambda k: abs(float(expected[k]) - q)) for q in queries.double().tolist()]
    assert bank.bin_index(queries).tolist() == nearest
    assert nearest[:2] == [0, 49]


def test_capacity_is_respected() -> None:
    bank = ErrorBank(num_bins=5, capacity=4)
    for i in range(12):
        bank.add(torch.tensor([0.999]), torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(i)))
    assert bank.counts.tolist() == [0, 0, 0, 0, 4]
    assert len(bank) == 4
    assert bank.error_shape == SHAPE


def test_full_bin_replaces_its_most_similar_entry_by_cosine() -> None:
    bank = ErrorBank(num_bins=3, capacity=3)
    basis = torch.eye(72).view(72, *SHAPE)
    stored = torch.stack([basis[0], 50 * (basis[1] + 0.5 * basis[2]), basis[3]])
    bank.add(sigmas_of(bank, [1, 1, 1]), stored)
    # Cosine-closest to entry 1, although entries 0 and 2 are much closer in L2 (117 vs 2041 squared).
    newcomer = 10 * (basis[1] + 0.4 * basis[2])
    bank.add(sigmas_of(bank, [1]), newcomer[None])
    errors = bank.state_dict()["errors"]
    assert torch.equal(errors[0], stored[0]) and torch.equal(errors[2], stored[2])
    assert torch.equal(errors[1], newcomer)
    assert bank.counts.tolist() == [0, 3, 0]


def test_sample_draws_from_the_matching_or_nearest_non_empty_bin() -> None:
    bank = ErrorBank(num_bins=50, capacity=8)
    assert bank.sample(torch.tensor([0.5])) is None
    assert bank.sample_any(3) is None
    bank.add(sigmas_of(bank, [10, 10, 40]), torch.cat([filled(10.0), filled(10.0), filled(40.0)]))
    draws = bank.sample(sigmas_of(bank, [10, 12, 24, 26, 30, 49, 0]), torch.Generator().manual_seed(0))
    assert draws.shape == (7, *SHAPE)
    assert draws[:, 0, 0, 0, 0].tolist() == [10.0, 10.0, 10.0, 40.0, 40.0, 40.0, 10.0]


def test_sampling_is_uniform_within_a_bin_and_seeded() -> None:
    bank = ErrorBank(num_bins=4, capacity=4)
    bank.add(torch.full((4,), 0.999), torch.stack([filled(float(i))[0] for i in range(4)]))
    sigma = torch.full((4000,), 0.999)
    a = bank.sample(sigma, torch.Generator().manual_seed(5))[:, 0, 0, 0, 0]
    b = bank.sample(sigma, torch.Generator().manual_seed(5))[:, 0, 0, 0, 0]
    c = bank.sample(sigma, torch.Generator().manual_seed(6))[:, 0, 0, 0, 0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    frequencies = torch.bincount(a.long(), minlength=4).float() / 4000
    torch.testing.assert_close(frequencies, torch.full((4,), 0.25), atol=0.03, rtol=0)


def test_sample_any_covers_every_bin_in_proportion() -> None:
    bank = ErrorBank(num_bins=10, capacity=8)
    bank.add(sigmas_of(bank, [0, 5, 5, 5]), torch.cat([filled(0.0), filled(5.0), filled(5.0), filled(5.0)]))
    draws = bank.sample_any(4000, torch.Generator().manual_seed(1))[:, 0, 0, 0, 0]
    assert set(draws.tolist()) == {0.0, 5.0}
    assert float((draws == 5.0).float().mean()) == pytest.approx(0.75, abs=0.03)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), adds=st.integers(0, 40))
def test_state_dict_round_trip_into_a_fresh_bank(seed: int, adds: int) -> None:
    g = torch.Generator().manual_seed(seed)
    bank = ErrorBank(num_bins=6, capacity=3, shift=5.0)
    for _ in range(adds):
        bank.add(torch.rand(2, generator=g), torch.randn(2, *SHAPE, generator=g))
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    fresh = ErrorBank(num_bins=6, capacity=3, shift=5.0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.counts, bank.counts)
    query = torch.rand(16, generator=g)
    a = bank.sample(query, torch.Generator().manual_seed(seed))
    b = fresh.sample(query, torch.Generator().manual_seed(seed))
    if adds == 0:
        assert a is None and b is None
    else:
        assert torch.equal(a, b)
        assert torch.equal(bank.sample_any(9, torch.Generator().manual_seed(1)),
                           fresh.sample_any(9, torch.Generator().manual_seed(1)))
        # Both keep evolving identically, including replacements in full bins.
        new = torch.randn(4, *SHAPE, generator=g)
        sig = torch.rand(4, generator=g)
        bank.add(sig, new)
        fresh.add(sig, new)
        assert torch.equal(bank.state_dict()["errors"], fresh.state_dict()["errors"])


def test_state_and_shapes_are_checked() -> None:
    bank = ErrorBank(num_bins=6, capacity=3)
    bank.add(torch.tensor([0.5]), filled(1.0))
    with pytest.raises(ValueError, match="state has capacity=3 but this bank has capacity=4"):
        ErrorBank(num_bins=6, capacity=4).load_state_dict(bank.state_dict())
    with pytest.raises(ValueError, match=r"per-sample shape \(2, 4, 3\) do not fit this bank's shape"):
        bank.add(torch.tensor([0.5]), torch.zeros(1, 2, 4, 3))
    with pytest.raises(ValueError, match=r"B = 2 \(from sigma\)"):
        bank.add(torch.tensor([0.5, 0.2]), filled(1.0))
    with pytest.raises(ValueError, match=r"sigma must have shape \[B\]"):
        bank.sample(torch.rand(2, 3))


def make_inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, *SHAPE, generator=g)
    motion = torch.randn(batch, 2, 2, 3, 3, generator=g)
    noise = torch.randn(batch, *SHAPE, generator=g)
    return x0, motion, noise, torch.rand(batch, generator=g)


def make_banks(entries: int = 6):
    x0_bank, noise_bank = ErrorBank(num_bins=5, capacity=4), ErrorBank(num_bins=5, capacity=4)
    g = torch.Generator().manual_seed(42)
    for _ in range(entries):
        x0_bank.add(torch.rand(2, generator=g), torch.randn(2, *SHAPE, generator=g))
        noise_bank.add(torch.rand(2, generator=g), torch.randn(2, *SHAPE, generator=g))
    return x0_bank, noise_bank


def test_p_clean_one_changes_nothing() -> None:
    x0, motion, noise, sigma = make_inputs(8)
    out = inject_errors(x0, motion, noise, sigma, *make_banks(), ErrorInjection(p_clean=1.0),
                        torch.Generator().manual_seed(0))
    assert torch.equal(out.x0, x0) and torch.equal(out.motion, motion) and torch.equal(out.noise, noise)
    assert not bool(out.target_injected.any() | out.motion_injected.any() | out.noise_injected.any())


def test_injected_errors_come_from_the_banks_and_inputs_stay_untouched() -> None:
    x0, motion, noise, sigma = make_inputs(6)
    copies = [t.clone() for t in (x0, motion, noise)]
    x0_bank, noise_bank = make_banks()
    always = ErrorInjection(p_clean=0.0, p_target=1.0, p_context=1.0, p_noise=1.0)
    out = inject_errors(
        x0, motion, noise, sigma, x0_bank, noise_bank, always, torch.Generator().manual_seed(3)
    )
    assert all(torch.equal(a, b) for a, b in zip(copies, (x0, motion, noise)))
    assert bool(out.target_injected.all() & out.motion_injected.all() & out.noise_injected.all())
    x0_stored = x0_bank.state_dict()["errors"]
    noise_stored = noise_bank.state_dict()["errors"]
    for b in range(6):
        dx = out.x0[b] - x0[b]
        assert any(torch.allclose(dx, e, atol=1e-6) for e in x0_stored), "not a stored x0 error"
        dn = out.noise[b] - noise[b]
        assert any(torch.allclose(dn, e, atol=1e-6) for e in noise_stored)
        dm = out.motion[b] - motion[b]
        windows = [e[:, s : s + 2] for e in x0_stored for s in range(3)]
        assert any(torch.allclose(dm, w, atol=1e-6) for w in windows)


def test_target_errors_use_the_bin_of_sigma() -> None:
    x0_bank, noise_bank = ErrorBank(num_bins=5, capacity=4), ErrorBank(num_bins=5, capacity=4)
    for k in range(5):
        x0_bank.add(sigmas_of(x0_bank, [k]), filled(float(k)))
    x0, _, noise, _ = make_inputs(5)
    sigma = sigmas_of(x0_bank, [4, 3, 2, 1, 0])
    always = ErrorInjection(p_clean=0.0, p_target=1.0, p_context=0.0, p_noise=1.0)
    out = inject_errors(x0, None, noise, sigma, x0_bank, noise_bank, always, torch.Generator().manual_seed(0))
    torch.testing.assert_close((out.x0 - x0)[:, 0, 0, 0, 0], torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    assert out.motion is None and not bool(out.motion_injected.any())
    assert torch.equal(out.noise, noise) and not bool(out.noise_injected.any())  # empty noise bank


def test_injection_is_deterministic_per_seed() -> None:
    x0, motion, noise, sigma = make_inputs(16)
    banks = make_banks()
    config = ErrorInjection()
    a = inject_errors(x0, motion, noise, sigma, *banks, config, torch.Generator().manual_seed(11))
    b = inject_errors(x0, motion, noise, sigma, *banks, config, torch.Generator().manual_seed(11))
    c = inject_errors(x0, motion, noise, sigma, *banks, config, torch.Generator().manual_seed(12))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_draws_are_independent_bernoullis() -> None:
    batch = 20000
    x0, motion, noise, sigma = make_inputs(batch)
    config = ErrorInjection(p_clean=0.5, p_target=0.9, p_context=0.6, p_noise=0.2)
    out = inject_errors(x0, motion, noise, sigma, *make_banks(), config, torch.Generator().manual_seed(0))

    def rate(m: torch.Tensor) -> float:
        return float(m.float().mean())

    assert rate(out.target_injected) == pytest.approx(0.45, abs=0.015)
    assert rate(out.motion_injected) == pytest.approx(0.30, abs=0.015)
    assert rate(out.noise_injected) == pytest.approx(0.10, abs=0.01)
    assert rate(out.target_injected & out.motion_injected) == pytest.approx(0.5 * 0.9 * 0.6, abs=0.015)
    changed = (out.x0 != x0).flatten(1).any(dim=1)
    assert torch.equal(changed, out.target_injected)


def test_injection_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="p_noise must lie in \\[0, 1\\], got 1.5"):
        ErrorInjection(p_noise=1.5)
    x0, motion, noise, sigma = make_inputs(2)
    always = ErrorInjection(p_clean=0.0, p_context=1.0)
    too_long = torch.zeros(2, 2, 5, 3, 3)
    with pytest.raises(ValueError, match=r"motion of shape \(2, 2, 5, 3, 3\) needs .* at least 5 frames"):
        inject_errors(x0, too_long, noise, sigma, *make_banks(), always)
    with pytest.raises(ValueError, match="noise shape"):
        inject_errors(x0, motion, noise[:, :1], sigma, *make_banks(), always)
