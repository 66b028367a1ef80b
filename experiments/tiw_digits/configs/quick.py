"""The demo: long-tailed digits, 5% balanced reference, 5 methods x 3 seeds; ~3 min on 2 unloaded CPU cores.

``python -m experiments.tiw_digits --config=quick``

scikit-learn's 8x8 digits (train split, 80%): the biased set keeps
``n_head * imbalance^(rank/9)`` images of the class of each frequency rank (a
per-seed class order); the reference set is class-balanced with 5% of the biased
set's size (the paper's CIFAR-10 long-tailed setting), disjoint from it. The
score model trains on ``D_obs = D_bias ∪ D_ref`` as in the authors' code.

The discriminator follows the authors' design: a small head on a FROZEN
noise-conditional feature map (theirs: a pretrained ADM classifier's encoder;
here: a ScoreMLP pretrained by plain DSM on D_obs, no labels), Adam 3e-4. Its
head size and length are chosen on a validation split of D_ref and D_bias
(``disc.candidates``), never on the test digits the metrics use.

The measured results are in the generated table and README.md.
"""

import ml_collections

METHODS = ("dsm_obs", "dsm_ref", "iw_dsm", "tiw_dsm", "authors_code")


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      name="quick",
      methods=METHODS,
      seeds=(0, 1, 2),
      data_seed=0,  # the train/test split of load_digits
      n_head=140,  # images of the most frequent class
      imbalance=0.1,  # tail / head count
      ref_size=0.05,  # |D_ref| = ref_size * |D_bias|, class-balanced
      # Score network: "mlp" = ScoreMLP(64, hidden, depth, embed_dim), "unet" =
      # ScoreUNet((8, 8, 1), channels, embed_dim).
      model=dict(kind="mlp", hidden=128, depth=3, embed_dim=32, channels=32),
      batch_size=128,
      learning_rate=1e-3,
      num_steps=1500,
      log_every=50,
      eval_every=500,
      # The frozen noise-conditional feature map of the discriminator: a ScoreMLP
      # trained by plain DSM on D_obs (no labels) for num_steps.
      encoder=dict(hidden=128, depth=2, embed_dim=16, num_steps=1000, learning_rate=1e-3),
      # The discriminator head (TimeDiscriminator on the features), Adam 3e-4 as the
      # authors. candidates: (head hidden, head depth, steps), chosen by the
      # balanced BCE on a validation split (validation_fraction of D_ref and of
      # D_bias, `draws` noise draws per image) on the seeds in select_seeds
      # (empty: every seed); the chosen candidate is then refit on all of D_ref
      # and D_bias.
      disc=dict(
        candidates=((16, 1, 100), (32, 1, 300), (32, 1, 1200)),
        batch_size=128,
        learning_rate=3e-4,
        validation_fraction=0.2,
        draws=8,
        select_seeds=(0,),
      ),
      t_range=None,
      n_generate=1000,
      sampler_steps=18,
      classifier=dict(hidden=128, max_iter=400),
    )
  )
