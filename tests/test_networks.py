import pytest
import torch

from gmx_deepbackmap.networks import Critic, Generator, NetworkConfig, Upsample2, gradient_penalty

CONFIG = NetworkConfig(width=8, noise_dim=6, n_atom_types=3, n_env_channels=5)


def inputs(config=CONFIG, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = config.grid_size
    env = torch.rand(batch, config.n_env_channels, d, d, d, generator=g)
    noise = torch.randn(batch, config.noise_dim, generator=g)
    atom_type = torch.eye(config.n_atom_types)[torch.randint(0, config.n_atom_types, (batch,), generator=g)]
    return env, noise, atom_type


@pytest.mark.parametrize("config", [CONFIG, NetworkConfig(width=4, blocks=(0, 2, 1), grid_size=16, norm_groups=0)])
def test_shapes_and_range(config):
    env, noise, atom_type = inputs(config)
    density = Generator(config)(env, noise, atom_type)
    d = config.grid_size
    assert density.shape == (4, 1, d, d, d)
    assert (density > 0).all() and (density < 1).all()
    assert Critic(config)(density, env, atom_type).shape == (4,)


def test_gradients_reach_every_parameter():
    generator, critic = Generator(CONFIG), Critic(CONFIG)
    env, noise, atom_type = inputs()
    critic(generator(env, noise, atom_type), env, atom_type).mean().backward()
    for module in (generator, critic):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_channels_last_matches():
    torch.manual_seed(0)
    generator, critic = Generator(CONFIG), Critic(CONFIG)
    env, noise, atom_type = inputs()
    cl = torch.channels_last_3d
    density = generator(env, noise, atom_type)
    density_cl = generator.to(memory_format=cl)(env.to(memory_format=cl), noise, atom_type)
    assert torch.allclose(density, density_cl, atol=1e-5)
    score = critic(density, env, atom_type)
    score_cl = critic.to(memory_format=cl)(density_cl, env.to(memory_format=cl), atom_type)
    assert torch.allclose(score, score_cl, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_matches_transposed_convolution(channels_last):
    up = Upsample2(6, 3)
    reference = torch.nn.ConvTranspose3d(6, 3, 2, stride=2)
    reference.load_state_dict(up.state_dict())
    x = torch.randn(2, 6, 4, 4, 4, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    y = up(x)
    torch.testing.assert_close(y, reference(x))
    grads = torch.autograd.grad(y.square().sum(), [x, up.weight])
    torch.testing.assert_close(grads, torch.autograd.grad(reference(x).square().sum(), [x, reference.weight]))


def test_deterministic_under_seed():
    env, noise, atom_type = inputs()
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        generator, critic = Generator(CONFIG), Critic(CONFIG)
        density = generator(env, noise, atom_type)
        outputs.append((density, critic(density, env, atom_type)))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


class Linear(torch.nn.Module):
    """C(x, y, c) = <w, x> + <v, y> + sum(c): gradient (w, v) everywhere, whatever c is."""

    def __init__(self, w, v=None):
        super().__init__()
        self.w = torch.nn.Parameter(w)
        self.v = None if v is None else torch.nn.Parameter(v)

    def forward(self, *args):
        *xs, c = args
        score = (xs[0] * self.w).flatten(1).sum(1) + c.flatten(1).sum(1)
        return score if self.v is None else score + (xs[1] * self.v).flatten(1).sum(1)


def test_gradient_penalty_linear_critic():
    w = torch.zeros(1, 8, 8, 8)
    w[0, 1, 2, 3], w[0, 4, 4, 4] = 2.4, 3.2  # ||w|| = 4
    critic = Linear(w)
    real, fake, cond = torch.rand(5, 1, 8, 8, 8), torch.rand(5, 1, 8, 8, 8), torch.rand(5, 3)
    penalty = gradient_penalty(critic, real, fake, cond, lambda_gp=0.1)
    assert penalty.item() == pytest.approx(0.1 * (4 - 1) ** 2, rel=1e-6)
    mixed_precision = gradient_penalty(critic, real, fake.bfloat16(), cond)  # autocast generator output
    assert mixed_precision.item() == pytest.approx(0.1 * 9, rel=1e-6)
    penalty.backward()  # d/dw lambda (||w|| - 1)^2 = 2 lambda (||w|| - 1) w / ||w||
    assert torch.allclose(critic.w.grad, 2 * 0.1 * 3 * w / 4, atol=1e-6)


def test_gradient_penalty_joint_inputs():
    w, v = torch.full((2, 3), 0.5), torch.full((4,), 0.5)  # joint norm sqrt(10 * 0.25)
    pair = lambda: (torch.rand(6, 2, 3), torch.rand(6, 4))  # noqa: E731
    penalty = gradient_penalty(Linear(w, v), pair(), pair(), torch.rand(6, 1), lambda_gp=2.0)
    assert penalty.item() == pytest.approx(2.0 * (2.5**0.5 - 1) ** 2, rel=1e-6)


def test_gradient_penalty_on_critic():
    critic = Critic(CONFIG)
    env, noise, atom_type = inputs()
    fake = Generator(CONFIG)(env, noise, atom_type)
    penalty = gradient_penalty(critic, torch.rand_like(fake), fake, env, atom_type)
    penalty.backward()
    assert penalty.ndim == 0 and penalty >= 0
    # every weight but the final bias (the input gradient does not depend on it) gets a gradient
    final_bias = critic.net[-1].bias
    assert all(p.grad is not None for p in critic.parameters() if p is not final_bias)
