"""A discrete hidden Markov model learned by exact enumeration, then decoded.

Synthetic data: 20 sequences of 100 steps from a 3-state HMM with Gaussian emissions. The
model sums the hidden states out exactly with TraceEnum_ELBO; `sg.markov` lets enumeration
reuse dims, so memory stays linear in the sequence length. The trained model is then decoded
with `infer_discrete(temperature=0)`: the most likely state path of every sequence (Viterbi),
checked against a hand-written Viterbi with the learned parameters and scored against the
true hidden states.

Run: python examples/hmm.py [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import os

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.infer import SVI, TraceEnum_ELBO, infer_discrete

TRUE_TRANS = torch.tensor([[0.90, 0.05, 0.05], [0.05, 0.90, 0.05], [0.05, 0.05, 0.90]])
TRUE_LOCS = torch.tensor([-3.0, 0.0, 3.0])


def simulate(steps, sequences, seed=0):
    """Observations and the hidden states that produced them, each (steps, sequences)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.zeros(sequences, dtype=torch.long)
    xs = torch.empty(steps, sequences)
    states = torch.empty(steps, sequences, dtype=torch.long)
    for t in range(steps):
        z = torch.multinomial(TRUE_TRANS[z], 1, generator=gen).squeeze(-1)
        xs[t] = TRUE_LOCS[z] + torch.randn(sequences, generator=gen)
        states[t] = z
    return xs, states


def model(xs):
    trans = sg.param("trans", torch.full((3, 3), 1 / 3) + 0.1 * torch.eye(3),
                     constraint=sg.constraints.simplex)
    locs = sg.param("locs", torch.tensor([-1.0, 0.5, 1.0]))
    with sg.plate("sequences", xs.shape[1], dim=-1):
        z = 0
        for t in sg.markov(range(xs.shape[0])):
            z = sg.sample(f"z_{t}", dist.Categorical(trans[z]), infer={"enumerate": "parallel"})
            sg.sample(f"x_{t}", dist.Normal(locs[z], 1.0), obs=xs[t])


def guide(xs):
    pass  # every latent is summed out in the model


def decode(xs):
    """The most likely hidden state path of each sequence under the learned parameters."""
    decoder = infer_discrete(model, first_available_dim=-2, temperature=0)
    tr = sg.handlers.trace(decoder).get_trace(xs)
    return torch.stack([tr[f"z_{t}"]["value"] for t in range(xs.shape[0])])


def viterbi(trans, locs, xs):
    """The same decoding written out by hand (max-product forward, then backtracking)."""
    log_trans = trans.log()
    emission = torch.distributions.Normal(locs, 1.0).log_prob(xs[..., None])  # (T, N, K)
    score = log_trans[0] + emission[0]  # the model's chain starts from state 0's row
    pointers = []
    for t in range(1, xs.shape[0]):
        step = score[:, :, None] + log_trans  # (N, from, to)
        pointers.append(step.argmax(1))
        score = step.amax(1) + emission[t]
    state = score.argmax(-1)
    path = [state]
    for back in reversed(pointers):
        state = back.gather(1, state[:, None]).squeeze(1)
        path.append(state)
    return torch.stack(path[::-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    quick = args.quick or "CI" in os.environ
    steps = 30 if quick else args.steps
    torch.set_num_threads(1)
    sg.clear_param_store()
    sg.set_rng_seed(0)
    xs, states = simulate(30 if quick else 100, 20)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(model, guide, sg.optim.Adam({"lr": 0.05}), elbo)
    first = -svi.step(xs)
    for _ in range(steps - 1):
        last = -svi.step(xs)
    per_obs = xs.numel()
    locs = sg.param("locs").detach().sort().values
    print(f"log-likelihood per observation: {first / per_obs:.3f} -> {last / per_obs:.3f}")
    print("emission means, learned vs true:", [round(v, 2) for v in locs.tolist()],
          TRUE_LOCS.tolist())
    stay = sg.param("trans").detach().diagonal()
    print("probability of staying, learned:", [round(v, 2) for v in stay.tolist()], "(true 0.9)")

    with torch.no_grad():
        decoded = decode(xs)
        by_hand = viterbi(sg.param("trans").detach(), sg.param("locs").detach(), xs)
    agrees = torch.equal(decoded, by_hand)
    # learned states are labelled by their emission means: map each to the nearest true one
    learned_locs = sg.param("locs").detach()
    relabel = (learned_locs[:, None] - TRUE_LOCS).abs().argmin(1)
    accuracy = float((relabel[decoded] == states).float().mean())
    print(f"decoded states (infer_discrete, temperature=0) vs true hidden states: "
          f"{accuracy:.1%} correct")
    print("hand-written Viterbi with the learned parameters agrees exactly:", agrees)
    return {"first": first / per_obs, "last": last / per_obs, "locs": locs,
            "accuracy": accuracy, "viterbi_agrees": agrees}


if __name__ == "__main__":
    main()
