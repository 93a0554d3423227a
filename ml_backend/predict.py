"""/predict: the proposed choice and its calibrated probability for each pair task.

What Label Studio shows with a task is what the model believes: the choice it would make (pre-filled
only once the calibrator has learned from answers) and, as the score, P(answer), the calibrated
probability of that choice. The queue order is not this score but the task's ``data.queue``, written
by each push (ml_backend.push). Pairs the backend pushed itself carry their P(same) from the pair
registry; any other pair is scored by the current model. Images that users imported themselves are
embedded on the fly, within a count and time bound, so one /predict call never blows Label Studio's
100 s timeout; what is left over is answered without a choice and queued for embedding.
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_backend import fetch
from ml_backend.errors import InputError
from ml_backend.pairs import image_ids_of, pair_id
from ml_backend.push import calibrated, p_same_of, prediction

if TYPE_CHECKING:
    from ml_backend.settings import Settings
    from ml_backend.state import ProjectState

log = logging.getLogger(__name__)

UNSCORED = 0.5  # P(answer) of a pair we could not score this call: no idea either way, no choice shown


def label_names(label_config: str) -> tuple[str, str]:
    """(from_name, to_name) of the first <Choices> tag of a Label Studio label config."""
    if not isinstance(label_config, str) or not label_config.strip():
        raise InputError("label_config", "must be a non-empty XML string")
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise InputError("label_config", f"not valid XML: {exc}") from None
    for element in root.iter():
        if element.tag == "Choices":
            name, to_name = element.get("name"), element.get("toName")
            if not name or not to_name:
                raise InputError("label_config", "<Choices> needs both name and toName")
            return name, to_name.split(",")[0].strip()
    raise InputError("label_config", "has no <Choices> tag (expected the same/different/unsure choice)")


@dataclass
class ServingModel:
    """What /predict scores with: the current version's embeddings of every stored image."""

    version: str
    row_of: dict[str, int]
    embeddings: np.ndarray
    calibrator: Any | None = None
    adapter_state: dict[str, Any] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # on-the-fly embedded, adapted

    def vector(self, image_id: str) -> np.ndarray | None:
        row = self.row_of.get(image_id)
        if row is not None:
            return self.embeddings[row]
        return self.extra.get(image_id)


ModelLoader = Callable[["ProjectState"], "ServingModel | None"]
Embedder = Callable[[list[Path]], np.ndarray]


def load_serving_model(settings: Settings, state: ProjectState) -> ServingModel | None:
    """The project's pushed version's embeddings (frozen store features before the first push),
    with a P(same) calibrator fitted on the answers recorded so far. None: nothing to serve.

    Why the pushed version (state.cycles.current_version()) and not registry.latest(): a cycle saves to
    the registry before its push, and the push records the version only once it is done; serving the newer
    registry entry meanwhile would label predictions with a version Label Studio does not serve yet,
    and Label Studio would average two scores for one task."""
    from strategies.calibration import PSameCalibrator
    from trainer.adapter import apply_adapter
    from trainer.registry import ModelRegistry
    from trainer.store import EmbeddingStore

    store_dir = settings.features_dir(state.project)
    if not store_dir.exists():
        return None
    store = EmbeddingStore(store_dir)
    ids = store.ids()
    if not ids:
        return None
    version = state.cycles.current_version()
    adapter_state = None
    if version is None:
        embeddings = apply_adapter(None, np.asarray(store.features()))
        version = "initial"
    else:
        try:
            loaded = ModelRegistry(settings.model_dir, state.project).load(version)
        except (FileNotFoundError, ValueError) as exc:  # pruned or foreign: serve nothing rather than another
            log.warning("project %s: pushed version %s cannot be loaded: %s", state.project, version, exc)
            return None
        adapter_state = loaded.adapter_state
        embeddings = np.asarray(loaded.embeddings, dtype=np.float32)
        if embeddings.shape[0] < len(ids):  # images stored after the cycle: run them through its adapter
            extra = apply_adapter(adapter_state, np.asarray(store.features()[embeddings.shape[0]:]))
            embeddings = np.vstack([embeddings, extra])
    row_of = {image_id: row for row, image_id in enumerate(ids[: embeddings.shape[0]])}
    sims, same = [], []
    for record in state.annotations.all():
        i, j = row_of.get(record["image_a"]), row_of.get(record["image_b"])
        if i is not None and j is not None and record["answer"] in ("same", "different"):
            sims.append(float(embeddings[i] @ embeddings[j]))
            same.append(record["answer"] == "same")
    calibrator = PSameCalibrator().fit(np.asarray(sims, dtype=np.float64), np.asarray(same, dtype=bool))
    return ServingModel(version=version, row_of=row_of, embeddings=embeddings, calibrator=calibrator,
                        adapter_state=adapter_state)


class Predictor:
    """Scores pair tasks for one process; caches the serving model per (project, version)."""

    def __init__(self, settings: Settings, *, load_model: ModelLoader | None = None,
                 embed_images: Embedder | None = None) -> None:
        self.settings = settings
        self._load_model = load_model or self._default_loader
        self._embed_images = embed_images or self._default_embedder
        self._models: dict[str, tuple[tuple[Any, ...], ServingModel | None]] = {}
        self._encoder: Any = None
        self._lock = threading.Lock()
        self._fetch_policy = fetch.FetchPolicy.from_settings(settings)
        # Embedding runs here, so a call can stop waiting at its deadline (loading the encoder or a slow
        # batch is not interruptible); one thread, so abandoned work never piles up in parallel.
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reid-al-embed")

    # --- model loading ---------------------------------------------------------------------------------
    def _default_loader(self, state: ProjectState) -> ServingModel | None:
        return load_serving_model(self.settings, state)

    def _default_embedder(self, paths: list[Path]) -> np.ndarray:
        from trainer.encoders import encoder_from_spec
        from trainer.images import load_rgb

        if self._encoder is None:
            self._encoder = encoder_from_spec(self.settings.encoder,
                                              checkpoint=self.settings.encoder_checkpoint or None)
        # load_rgb: 16-bit greys, transparency, EXIF rotation and GIF frames, as in batch extraction.
        images = [load_rgb(path) for path in paths]
        return np.asarray(self._encoder.embed_pil(images).detach().cpu().numpy(), dtype=np.float32)

    def model(self, state: ProjectState, cache_key: tuple[Any, ...] = ()) -> ServingModel | None:
        """The serving model, reloaded when `cache_key` (e.g. the current version) changes."""
        with self._lock:
            cached = self._models.get(state.project)
            if cached is not None and cached[0] == cache_key:
                return cached[1]
        model = self._load_model(state)
        with self._lock:
            self._models[state.project] = (cache_key, model)
        return model

    # --- predict ---------------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[Any], label_config: str | None, state: ProjectState,
                *, on_missing: Callable[[list[dict[str, str]]], Any] | None = None) -> list[dict[str, Any]]:
        """One prediction per task, same order (Label Studio's contract)."""
        if not isinstance(tasks, Sequence) or isinstance(tasks, (str, bytes)):
            raise InputError("tasks", f"must be a list, got {type(tasks).__name__}")
        meta = state.meta()
        if label_config:
            from_name, to_name = label_names(label_config)
        else:
            from_name, to_name = meta.get("from_name", "answer"), meta.get("to_name", "pair")
        parsed: list[tuple[str, str, Mapping[str, Any]]] = []
        for index, task in enumerate(tasks):
            if not isinstance(task, Mapping):
                raise InputError(f"tasks[{index}]", "must be an object")
            data = task.get("data")
            if not isinstance(data, Mapping):
                raise InputError(f"tasks[{index}].data", "must be an object")
            try:
                a, b = image_ids_of(data)
            except ValueError as exc:
                raise InputError(f"tasks[{index}].data", str(exc)) from None
            parsed.append((a, b, data))
        # Only a request that passed validation may change meta: a rejected (422) one changes nothing.
        if label_config and (meta.get("from_name"), meta.get("to_name")) != (from_name, to_name):
            state.set_meta(from_name=from_name, to_name=to_name)

        version = state.cycles.current_version()
        # reload on a new version, and refit the calibrator as answers accumulate
        model = self.model(state, (version, state.counters().get("pairs_asked", 0) // 25))
        model_version = model.version if model is not None else (version or "initial")
        if model is not None:
            self._embed_missing(model, parsed, state, on_missing)

        prefill = model is not None and calibrated(model.calibrator)
        results: list[dict[str, Any]] = []
        pending_rows: list[int] = []
        vec_a: list[np.ndarray] = []
        vec_b: list[np.ndarray] = []
        for index, (a, b, _data) in enumerate(parsed):
            record = state.pairs.get(pair_id(a, b))
            if _data.get("review_key"):
                record = None  # its registry entry scores the first ask, not this one
            if (record is not None and record.get("model_version") == model_version
                    and record.get("p_same") is not None and record.get("priority") is not None):
                results.append(self._result(float(record["p_same"]), prefill, model_version, from_name,
                                            to_name))
                continue
            va = model.vector(a) if model is not None else None
            vb = model.vector(b) if model is not None else None
            if va is None or vb is None:
                results.append({"result": [], "score": UNSCORED, "model_version": model_version})
                continue
            results.append({})
            pending_rows.append(index)
            vec_a.append(va)
            vec_b.append(vb)
        if pending_rows:
            stacked = np.vstack([np.asarray(vec_a), np.asarray(vec_b)]).astype(np.float32)
            n = len(pending_rows)
            p = p_same_of(stacked, list(range(n)), list(range(n, 2 * n)), model.calibrator if model else None)
            for index, value in zip(pending_rows, p, strict=True):
                results[index] = self._result(float(value), prefill, model_version, from_name, to_name)
        state.count("predictions_served", len(results))
        return results

    @staticmethod
    def _result(p_same: float, prefill: bool, model_version: str, from_name: str,
                to_name: str) -> dict[str, Any]:
        return {**prediction(p_same, prefill=prefill, from_name=from_name, to_name=to_name,
                             model_version=model_version), "p_same": round(p_same, 6)}

    def _embed_missing(self, model: ServingModel, parsed: list[tuple[str, str, Mapping[str, Any]]],
                       state: ProjectState,
                       on_missing: Callable[[list[dict[str, str]]], Any] | None) -> None:
        """Embed images not in the serving model, bounded by REID_AL_PREDICT_EMBED_MAX / _SECONDS."""
        urls: dict[str, str] = {}
        for a, b, data in parsed:
            for image_id, key in ((a, "image_a"), (b, "image_b")):
                if model.vector(image_id) is None and image_id not in urls:
                    urls[image_id] = str(data.get(key) or image_id)
        if not urls:
            return
        budget = self.settings.predict_embed_max
        deadline = time.monotonic() + self.settings.predict_embed_seconds
        todo = list(urls.items())
        done: list[str] = []
        cache_dir = self.settings.downloads_dir(state.project)
        batch = 4
        while todo and len(done) < budget and time.monotonic() < deadline:
            chunk, todo = todo[:min(batch, budget - len(done))], todo[min(batch, budget - len(done)):]
            ids, paths = [], []
            for image_id, url in chunk:
                try:
                    paths.append(fetch.fetch_image(url, self._fetch_policy, cache_dir, deadline=deadline))
                    ids.append(image_id)
                except (ValueError, OSError) as exc:
                    log.warning("project %s: cannot fetch image %s: %s", state.project, image_id, exc)
                    state.incr("predict_embed_failed")
            if not ids:
                continue
            future = self._embedder.submit(self._embed_images, paths)
            try:
                features = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                future.cancel()  # not started yet: dropped; running: finishes in the background, unused
                todo = [*((image_id, urls[image_id]) for image_id in ids), *todo]
                log.warning("project %s: embedding did not finish within REID_AL_PREDICT_EMBED_SECONDS"
                            "=%s; %d images left to the worker", state.project,
                            self.settings.predict_embed_seconds, len(todo))
                break
            except (OSError, ValueError, RuntimeError) as exc:  # unreadable image, encoder unavailable
                log.warning("project %s: cannot embed %d images: %s", state.project, len(ids), exc)
                state.incr("predict_embed_failed", len(ids))
                continue
            from trainer.adapter import apply_adapter

            adapted = apply_adapter(model.adapter_state, features)
            for image_id, vector in zip(ids, adapted, strict=True):
                model.extra[image_id] = vector
            done.extend(ids)
        state.incr("predict_embedded", len(done))
        if todo:
            state.incr("predict_embed_deferred", len(todo))
        # Every image seen here (embedded now or not) is stored by a worker job, once, for the next cycle.
        claimed = state.images.claim(urls)
        if claimed and on_missing is not None:
            on_missing([{"id": image_id, "url": urls[image_id]} for image_id in claimed])
