"""Every algorithm default in one place, named after the papers' symbols (see ALGORITHMS.md)."""

# §1 kNN graph and k-reciprocal Jaccard similarity (Zhong et al. 2017; SpCL defaults)
KNN_K = 30
# Exact IndexFlatIP up to this many points, approximate above. Measured at 100k, d=512
# (docs/benchmarks.md): exact 80 s; HNSW 923 s with recall@30 0.66 (DBSCAN ARI 0.42 vs 0.99 exact).
EXACT_KNN_MAX = 200_000
APPROXIMATE_INDEX = "hnsw"  # or "ivf"
HNSW_M = 32
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16
K1 = 30
K2 = 6

# §2 clustering
DBSCAN_EPS = 0.6
DBSCAN_MIN_SAMPLES = 4

# §3 constraints / §4 NP3
CONTRADICTION_POLICY = "ml_wins"  # or "cl_wins", "latest_wins"
EXACT_COLOURING_MAX_NODES = 15

# §5 AAS (seed 001)
AAS_EPSILON = 0.6  # ε: mixture weight of U_os (eq. 6)
AAS_K_MAX = 5  # k_max: nearest other medoids per medoid
AAS_S_MIN = 0.3  # s_min: minimum (Jaccard) similarity of a U_os pair
AAS_EXACT_MEDOID_MAX = 2_000  # regions larger than this use the point nearest the mean
AAS_BUDGET_FRACTION = 0.0002  # 0.02% of all n(n-1)/2 pairs per cycle

# §6 uncertainty + diversity (seed 000)
UNC_TAU = 0.05
UNC_LAMBDA_U = 0.5
UNC_LAMBDA_D = 0.5
UNC_NEAR_DUPLICATE = 0.95
UNC_TOP_IDENTITIES = 3  # pairs per selected unit: its representatives of the top identities

# §7 calibration of P(same)
CALIBRATION_MIN_LABELS = 6

# §8 training
CONTRAST_TEMPERATURE = 0.05
MEMORY_MOMENTUM = 0.2
UA_ALPHA = 0.1  # α: uncertainty regulariser weight (seed 004)
GM_BETA = 0.5  # β: group-wise matching loss weight (seed 004)
GM_HARD_NEGATIVES = 4  # K

# --- §8 training: adapter, losses and the retraining cycle (trainer/adapter.py, trainer/cycle.py) ---
PAIR_MARGIN = 0.3  # cannot-link pairs are pushed below this cosine similarity
TRAIN_EPOCHS = 5
TRAIN_BATCH_SIZE = 256  # rows per step: half anchors, half their sampled partners
TRAIN_LR = 3e-4  # 1e-3 overfit training identities at 512-d (held-out mAP fell); see bench_training
TRAIN_WEIGHT_DECAY = 1e-4
TRAIN_STEPS_PER_EPOCH_MAX = 100  # SpCL-style fixed iterations: caps the CPU cost per cycle on large pools
TRAIN_PAIRS_PER_BATCH = 64  # human ML/CL pairs drawn into every step
ADAPTER_HIDDEN_DIM = 256
VIEW_NOISE = 0.01  # std of the Gaussian noise that makes the second "view" of a frozen feature
VIEW_DROPOUT = 0.1  # feature dropout of the second view
UA_PAIRED_WEIGHT = 0.0  # [ours] weight of the feature-noise view as a UA positive (1 = paper)
# --- end §8 training ---

# --- trainer: encoders, extraction, model registry (issue 4, trainer/encoders.py etc.) ---
OPEN_CLIP_DEFAULT_MODEL = "ViT-B-32"
OPEN_CLIP_DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_ENCODER_SPEC = f"open_clip:{OPEN_CLIP_DEFAULT_MODEL}:{OPEN_CLIP_DEFAULT_PRETRAINED}"
ENCODER_REDUCED_PRECISION_MIN_COSINE = 0.998  # bf16/fp16 used only if it agrees this well with fp32
ENCODER_PROBE_IMAGES = 4  # synthetic images in the precision probe batch
ENCODER_CONNECT_TIMEOUT = 3.0  # seconds to decide that weights cannot be downloaded (fail fast offline)
EXTRACTION_BATCH_SIZE = 64
REGISTRY_STALE_TMP_SECONDS = 3600  # a temp version dir from another host older than this is abandoned
# --- end trainer: encoders ---

# --- §1-2 kNN / Jaccard / FINCH implementation knobs (strategies/knn.py, jaccard.py, clustering.py) ---
HNSW_EF_CONSTRUCTION = 200  # HNSW build beam (80 gave recall@30 0.86 at 10k, 200 gave 0.98); >= k
IVF_NLIST_PER_SQRT_N = 4  # IVF lists = 4·sqrt(n) (capped so every list gets >= 39 training points)
IVF_TRAIN_PER_LIST = 64  # k-means training sample = 64 points per list (faiss recommends 39-256)
NORM_TOLERANCE = 1e-2  # |‖x‖ - 1| above this is rejected as "not L2-normalised" (float16 rounding passes)
FINCH_CANDIDATES = 8  # neighbours fetched per point before the exact first-neighbour / tie rule
JACCARD_DOT_CHUNK = 125_000  # R* entries outside the kNN graph whose dot products are gathered at once
JACCARD_BLOCK_WORK = 1 << 17  # V entries compared per vectorised Σmin block (keeps the block in cache)

# --- §5-7 samplers: implementation knobs (strategies/samplers/, issue 3) ---
RANDOM_MAX_DRAWS_FACTOR = 20  # random: draws per wanted pair before the exact row-scan fallback
RANDOM_MIN_DRAWS = 10_000  # random: never give up rejection sampling before this many draws
UNC_UNCERTAINTY = "entropy"  # or "margin", "spread": the identity-uncertainty measure u_i
UNC_LAMBDA_TEXT = 0.5  # weight of the text/image ranking disagreement added to u_i
UNC_SEGMENT_SECONDS = 60.0  # time-segment length of the one-pick-per-(camera, segment) cap
AAS_SIMILARITY = "jaccard"  # sim of U_os / eq. 4: "jaccard" (k-reciprocal, SpCL) or "cosine"
# [ours] once labelled identities exist, how many of a pick's pairs may go to its nearest unlabelled units
# (provisional identities) instead: 0 = labelled identities only (chosen on the simulator, simulate.md)
UNC_PROVISIONAL_IDENTITIES = 1
# --- end samplers ---

# --- §3-4 constraints / NP3, §7 calibration, §9 metrics: implementation knobs (issue 2, second half) ---
CALIBRATION_METHOD = "logistic"  # or "isotonic": how P(same) is fitted on the labelled pairs
CALIBRATION_PRIOR_CENTER = 0.5  # cosine at which the prior curve says P(same) = 0.5 (before min_labels)
CALIBRATION_PRIOR_SLOPE = 10.0  # steepness of the prior logistic on cosine
CALIBRATION_LOGISTIC_C = 100.0  # inverse L2 strength of the logistic fit (weak: sims live in [-1, 1])
METRICS_CHUNK_ELEMENTS = 4_000_000  # query x gallery distances held at once by retrieval_metrics
# --- end constraints / NP3 / calibration / metrics ---

# --- trainer: full fine-tuning of the visual tower (trainer/finetune.py, a GPU option) ---
FINETUNE_EPOCHS = 10
FINETUNE_BATCH_SIZE = 64  # images per step: half anchors, half their sampled partners (+ human pairs)
FINETUNE_LR = 1e-5  # small: the backbone is pretrained and the pseudo-labels are noisy
FINETUNE_WEIGHT_DECAY = 1e-4
FINETUNE_STEPS_PER_EPOCH_MAX = 200
FINETUNE_PAIRS_PER_BATCH = 16  # human ML/CL pairs (two images each) drawn into every step
FINETUNE_MAX_GRAD_NORM = 5.0  # gradient clipping on the visual tower (fp16 steps stay bounded)
FINETUNE_NUM_WORKERS = 4  # DataLoader decode processes
# --- end trainer: fine-tuning ---
