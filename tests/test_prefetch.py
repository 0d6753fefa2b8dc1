"""The training loader's background preparation (``loader(..., prefetch=True)``): the synchronous
loader's batches in its order, errors as the synchronous loader raises them, the fallback for a
collate that draws from a global random generator, and no thread left behind."""

from __future__ import annotations

import gc
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modaltune.data.rows import Row
from modaltune.errors import DataError
from modaltune.trainer.batches import MediaDataset, chunk, epoch_order, loader


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "modaltune-prefetch"]


def _rows(folder: Path, n: int = 10, bad: int | None = None) -> list[Row]:
    rows = []
    for i in range(n):
        path = folder / f"{i}.png"
        if i == bad:
            path.write_bytes(b"not a png")
        else:
            pixels = np.random.default_rng(i).integers(0, 256, (12 + i, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        rows.append(Row(id=path.name, image=path, label=f"c{i % 3}"))
    return rows


def _collate(items: list) -> dict[str, torch.Tensor]:
    images = [torch.from_numpy(np.array(media["image"].convert("RGB").resize((8, 8)))) for _, media in items]
    return {"pixels": torch.stack(images), "index": torch.tensor([int(row.id.split(".")[0]) for row, _ in items])}


def _keys(n: int, size: int, epoch: int = 1) -> list[list[tuple[int, int]]]:
    return chunk([(epoch, i) for i in epoch_order(n, seed=5, epoch=epoch)], size)


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_prefetching_yields_the_synchronous_batches_in_order_from_a_background_thread(tmp_path):
    dataset = MediaDataset(_rows(tmp_path), augment=True, seed=3)  # seeded crops and flips
    keys = _keys(10, 3)
    where: list[str] = []

    def collate(items: list) -> dict[str, torch.Tensor]:
        where.append(threading.current_thread().name)
        return _collate(items)

    synchronous = list(loader(dataset, keys, _collate))
    prefetched = list(loader(dataset, keys, collate, prefetch=True))
    _assert_same(synchronous, prefetched)
    # the first batch in the caller's thread (probed for global RNG draws), the others in the background
    assert where == ["MainThread"] + ["modaltune-prefetch"] * (len(keys) - 1)
    assert not _threads()


def test_a_bad_image_in_a_prefetched_batch_raises_what_the_synchronous_loader_raises(tmp_path):
    dataset = MediaDataset(_rows(tmp_path, bad=7))
    keys = chunk([(0, i) for i in range(10)], 3)  # row 7 is in the third batch, prepared in the thread
    with pytest.raises(DataError) as synchronous:
        list(loader(dataset, keys, _collate))
    got = []
    with pytest.raises(DataError) as prefetched:
        for batch in loader(dataset, keys, _collate, prefetch=True):
            got.append(batch)
    assert type(prefetched.value) is type(synchronous.value)
    assert str(prefetched.value) == str(synchronous.value) and "7.png" in str(prefetched.value)
    assert len(got) == 2  # the batches before the bad one were delivered
    del prefetched, synchronous
    gc.collect()
    assert not _threads()


def test_an_error_raised_by_collate_keeps_its_type_and_message(tmp_path):
    class Refused(ValueError):
        pass

    def collate(items: list) -> dict[str, torch.Tensor]:
        if any(row.id == "4.png" for row, _ in items):
            raise Refused("row 4.png: boxes outside the image")
        return _collate(items)

    with pytest.raises(Refused, match=r"^row 4\.png: boxes outside the image$"):
        list(loader(MediaDataset(_rows(tmp_path)), chunk([(0, i) for i in range(10)], 2), collate, prefetch=True))
    gc.collect()
    assert not _threads()


def test_the_thread_is_gone_when_the_consumer_stops_early(tmp_path):
    dataset = MediaDataset(_rows(tmp_path, n=12))
    keys = chunk([(0, i) for i in range(12)], 2)

    def first_two() -> list:
        out = []
        for batch in loader(dataset, keys, _collate, prefetch=True):
            out.append(batch)
            if len(out) == 2:
                assert len(_threads()) == 1  # it was preparing the next one
                break  # like the training loop at early stopping or max_steps
        return out

    assert len(first_two()) == 2
    assert not _threads()

    batches = loader(dataset, keys, _collate, prefetch=True)
    next(batches)
    batches.close()  # type: ignore[attr-defined]
    assert not _threads()

    def raises() -> None:
        for _ in loader(dataset, keys, _collate, prefetch=True):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        raises()
    gc.collect()
    assert not _threads()


@pytest.mark.parametrize("source", ["torch", "numpy", "random"])
def test_a_collate_that_draws_from_a_global_generator_is_prepared_synchronously(tmp_path, source):
    draws = {"torch": lambda: float(torch.rand(())), "numpy": lambda: float(np.random.rand())}
    draw = draws.get(source, random.random)
    where: list[str] = []

    def collate(items: list) -> dict[str, torch.Tensor]:
        where.append(threading.current_thread().name)
        return {**_collate(items), "noise": torch.tensor(draw())}

    def batches(prefetch: bool) -> list[dict]:
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        out = list(loader(MediaDataset(_rows(tmp_path)), _keys(10, 4), collate, prefetch=prefetch))
        return [*out, {"after": torch.tensor([draw() for _ in range(3)])}]  # the generator's state after

    _assert_same(batches(False), batches(True))
    assert set(where) == {"MainThread"}


def test_a_global_draw_first_seen_after_the_first_batch_ends_the_prefetching(tmp_path):
    where: list[str] = []

    def collate(items: list) -> dict[str, torch.Tensor]:
        where.append(threading.current_thread().name)
        batch = _collate(items)
        if any(row.id == "5.png" for row, _ in items):  # a data-dependent draw, e.g. a random crop of a long clip
            batch["noise"] = torch.tensor(np.random.rand())
        return batch

    keys = chunk([(0, i) for i in range(10)], 2)  # 5.png is in the third batch of five
    np.random.seed(0)
    synchronous = list(loader(MediaDataset(_rows(tmp_path)), keys, collate))
    where.clear()
    np.random.seed(0)
    prefetched = list(loader(MediaDataset(_rows(tmp_path)), keys, collate, prefetch=True))
    _assert_same(synchronous, prefetched)
    assert where == ["MainThread", "modaltune-prefetch", "modaltune-prefetch", "MainThread", "MainThread"]
    assert not _threads()


def test_training_with_prefetching_is_bit_identical_to_training_without(tiny_clip, shape_folder, tmp_path):
    from safetensors.torch import load_file

    from modaltune import api
    from modaltune.config import build_config

    def weights(prefetch: bool) -> dict[str, torch.Tensor]:
        out = tmp_path / f"run-{prefetch}"
        # 18 rows, batch 4: 5 micro-batches an epoch; max_steps stops inside the second epoch
        cfg = build_config(
            task="classify",
            model=str(tiny_clip),
            data=str(shape_folder),
            strategy="full",
            epochs=2,
            max_steps=7,
            batch_size=4,
            lr=1e-3,
            augment=True,
            seed=3,
            workers=0,
            prefetch=prefetch,
            zero_shot_baseline=False,
            output=str(out),
        )
        api.train(cfg)
        assert not _threads()
        return load_file(str(out / "model" / "model.safetensors"))

    with_prefetch, without = weights(True), weights(False)
    assert with_prefetch.keys() == without.keys()
    assert all(torch.equal(with_prefetch[k], without[k]) for k in without)


def test_the_thread_flushes_subnormal_floats_as_the_calling_thread_does(tmp_path):
    def collate(items: list) -> dict[str, torch.Tensor]:
        return {**_collate(items), "tiny": torch.tensor([1e-39], dtype=torch.float32) * 1.0}

    keys = chunk([(0, i) for i in range(10)], 2)
    for flush in (True, False):
        if flush and not torch.set_flush_denormal(True):
            continue  # a CPU without the mode
        try:
            batches = list(loader(MediaDataset(_rows(tmp_path)), keys, collate, prefetch=True))
        finally:
            torch.set_flush_denormal(False)
        assert {float(b["tiny"][0]) == 0.0 for b in batches} == {flush}


def test_a_clap_fusion_extractor_which_draws_from_numpy_keeps_its_batches_synchronous(tmp_path):
    """HF's CLAP fusion extractor marks a random clip ``is_longer`` (np.random) in every batch of short
    clips: its draws must stay in the training thread, in order, as they were before prefetching."""
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor(truncation="fusion")
    where: list[str] = []

    def collate(items: list) -> dict[str, torch.Tensor]:
        where.append(threading.current_thread().name)
        clips = [np.full(4800, 0.01 * (1 + int(row.id.split(".")[0])), dtype=np.float32) for row, _ in items]
        out = extractor(clips, sampling_rate=extractor.sampling_rate, return_tensors="pt")
        return {"is_longer": out["is_longer"], "input_features": out["input_features"]}

    def batches(prefetch: bool) -> list[dict]:
        np.random.seed(0)
        out = list(
            loader(MediaDataset(_rows(tmp_path, n=8)), chunk([(0, i) for i in range(8)], 2), collate, prefetch=prefetch)
        )
        return [*out, {"after": torch.tensor(np.random.rand(3))}]

    _assert_same(batches(False), batches(True))
    assert set(where) == {"MainThread"}


def test_a_fit_gives_the_caller_back_its_subnormal_mode():
    # The loop flushes subnormals while it trains on a CPU; a caller that flushes them itself keeps that after.
    from modaltune.trainer.batches import flushes_denormals
    from modaltune.trainer.loop import _flush_denormals

    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal floats")
    try:
        for mode in (True, False):
            torch.set_flush_denormal(mode)
            with _flush_denormals(torch.device("cpu")):
                assert flushes_denormals()
            assert flushes_denormals() is mode
    finally:
        torch.set_flush_denormal(False)
