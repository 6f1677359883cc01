"""Adapters that plug the service into RL frameworks without glue: each is a few lines over `armo.client`, and none
imports its framework (TRL, verl, OpenRLHF call these functions; they never need to be imported from here).

- `armo.integrations.trl.ArmoReward`: a reward function for `GRPOTrainer(reward_funcs=[...])`;
- `armo.integrations.verl.compute_score` / `compute_score_batch`: verl's `custom_reward_function`;
- `armo.integrations.openrlhf`: a file OpenRLHF loads as `--remote_rm_url path/to/openrlhf.py` (its `reward_func`);
  the plain URL mode needs no adapter (`--remote_rm_url http://host:8000/get_reward`).

Recipes: docs/INTEGRATIONS.md.
"""
