"""Every default of the algorithms in strategies/, named after the papers' symbols (see ALGORITHMS.md).

Training, encoder and service defaults live in trainer/defaults.py.
"""

# §1 kNN graph and k-reciprocal Jaccard similarity (Zhong et al. 2017; SpCL defaults)
KNN_K = 30
# Exact IndexFlatIP up to this many points, approximate above (strategies/knn.py). Exact search costs
# n^2 d: 38 s at 50k and d=1280, about 150 s at 100k. The approximate path (IVF-Flat on a 128-d PCA
# projection, neighbours scored in full dimension) kept as many true same-identity neighbours as exact
# search on real-structured features at 100k and 400k (benchmarks/bench_cycle.py, docs/benchmarks.md).
EXACT_KNN_MAX = 50_000
# IVF rather than HNSW: seeded and deterministic, and the same index runs on a GPU
APPROXIMATE_INDEX = "ivf"  # or "hnsw"
APPROXIMATE_DIM = 128  # PCA width the approximate index searches
APPROXIMATE_PCA_SAMPLE = 50_000  # rows the PCA is fit on (seeded sample)
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
# Review of answers (strategies/review.py; WBIA's positive redundancy). [ours] A "same" answer that would
# merge two groups whose smaller one has REDUNDANCY_MIN_SIZE images or more, or whose calibrated P(same)
# is below REDUNDANCY_MAX_P_SAME, waits until REDUNDANCY_K answers say "same" (1 turns this off)
REDUNDANCY_K = 2
REDUNDANCY_MIN_SIZE = 2
REDUNDANCY_MAX_P_SAME = 0.2
EXACT_COLOURING_MAX_NODES = 15

# §11 identities and the samplers that build them
# [ours] a first-neighbour link whose calibrated P(same) is below this is not made (the image stays a new
# individual); 0.05 changed nothing on two glyph sets and helped the icon set a little (docs/benchmarks.md)
IDENTITY_MIN_P_SAME = 0.05
# [ours] an image whose most similar image a cannot-link separates from it links to its next image (True),
# or makes no link of its own (False: a wrong "different" then cannot also merge it into a stranger).
# "auto": True until answers conflict (an annotator erred), then False. False throughout gained 2.4 points of
# pool F1 for a 10%-wrong annotator but cost hybrid 3.1 on glyphs-mixed with a perfect one, where the next
# image is often the right one; "auto" never changes a consistent annotator's identities (docs/benchmarks.md)
IDENTITY_LINK_PAST_CANNOT_LINK = "auto"
NEW_INDIVIDUAL_MIN = 0.5  # alone, and P(same) to its nearest image <= 1 - this: proposed as a new individual
CANDIDATE_NEIGHBORS = 10  # kNN columns whose edges are candidate pairs for match-first / hybrid
MAX_PAIRS_PER_IMAGE = 2  # an image appears in at most this many proposals of one batch
HYBRID_MATCH_FRACTION = 0.5  # share of a hybrid batch asked match-first; the rest at the boundary
# [ours] once at least this share of the answers so far are "same", the likeliest matches mostly confirm
# links the identity assignment already infers, and the smaller share below is asked match-first:
# glyphs-plain (94% "same" after one cycle) pool F1 0.788 -> 0.805; glyphs-mixed (16-32%) unaffected
# (docs/benchmarks.md)
HYBRID_CONFIRMED_SAME_RATE = 0.5
HYBRID_CONFIRMED_MATCH_FRACTION = 0.25
HYBRID_CONFIRMED_MIN_ANSWERS = 10  # fewer answers than this say nothing about the rate

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
CALIBRATION_MIN_PER_CLASS = 3  # "same" and "different" answers each needed before the fit replaces the prior

# §1-2 kNN / Jaccard / FINCH implementation knobs (strategies/knn.py, jaccard.py, clustering.py)
HNSW_EF_CONSTRUCTION = 200  # HNSW build beam (80 gave recall@30 0.86 at 10k, 200 gave 0.98); >= k
IVF_NLIST_PER_SQRT_N = 4  # IVF lists = 4·sqrt(n) (capped so every list gets >= 39 training points)
IVF_TRAIN_PER_LIST = 64  # k-means training sample = 64 points per list (faiss recommends 39-256)
NORM_TOLERANCE = 1e-2  # |‖x‖ - 1| above this is rejected as "not L2-normalised" (float16 rounding passes)
FINCH_CANDIDATES = 8  # neighbours fetched per point before the exact first-neighbour / tie rule
JACCARD_DOT_CHUNK = 125_000  # R* entries outside the kNN graph whose dot products are gathered at once
JACCARD_BLOCK_WORK = 1 << 17  # V entries compared per vectorised Σmin block (keeps the block in cache)
# V for a subset of rows: row-by-row reciprocity (kk² gathers per row) beats the whole-graph sparse
# product while rows x kk stays below this many times n (measured at n = 100k, k1 = 30)
JACCARD_ROWS_FACTOR = 6

# §5-7 samplers: implementation knobs (strategies/samplers/)
RANDOM_MAX_DRAWS_FACTOR = 20  # random: draws per wanted pair before the exact row-scan fallback
RANDOM_MIN_DRAWS = 10_000  # random: never give up rejection sampling before this many draws
UNC_UNCERTAINTY = "entropy"  # or "margin", "spread": the identity-uncertainty measure u_i
UNC_LAMBDA_TEXT = 0.5  # weight of the text/image ranking disagreement added to u_i
UNC_SEGMENT_SECONDS = 60.0  # time-segment length of the one-pick-per-(camera, segment) cap
AAS_SIMILARITY = "jaccard"  # sim of U_os / eq. 4: "jaccard" (k-reciprocal, SpCL) or "cosine"
# [ours] once labelled identities exist, how many of a pick's pairs may go to its nearest unlabelled units
# (provisional identities) instead: 0 = labelled identities only (chosen on the simulator, simulate.md)
UNC_PROVISIONAL_IDENTITIES = 1

# §3-4 constraints / NP3, §7 calibration, §9 metrics: implementation knobs
CALIBRATION_METHOD = "logistic"  # or "isotonic": how P(same) is fitted on the labelled pairs
CALIBRATION_PRIOR_CENTER = 0.5  # cosine at which the prior curve says P(same) = 0.5 (before min_labels)
CALIBRATION_PRIOR_SLOPE = 10.0  # steepness of the prior logistic on cosine
CALIBRATION_LOGISTIC_C = 100.0  # inverse L2 strength of the logistic fit (weak: sims live in [-1, 1])
METRICS_CHUNK_ELEMENTS = 4_000_000  # query x gallery distances held at once by retrieval_metrics

# Stopping rule (strategies/stopping.py): WBIA's refresh criterion and its published defaults
# (wbia/algo/graph/refresh.py: span 20, patience 72, threshold 0.1, binomial model). With them the
# rule fires after about 65 answers in a row that change nothing, from any starting rate.
STOP_WINDOW = 20  # span of the exponentially weighted rate of label-changing answers
STOP_PATIENCE = 72  # N: "the chance that any of the next N answers changes something"
STOP_THRESHOLD = 0.1  # stop when that chance falls below this
