import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from models.core.manifest import append_manifest_entry, manifest_path, merge_manifests, read_manifest
from models.data.dataset import LatentVideoDataset


def write_clip(root, name, *, frames=8, preprocessing="standard", manifest=True, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    image, latents = torch.rand(3, 64, 48, generator=g), torch.randn(frames, 4, 16, 12, generator=g)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(image, root / f"{name}_image.pt")
    torch.save(latents, root / f"{name}.pt")
    if manifest:
        entry = {"name": name, "source": f"videos/{name}.mp4", "start_frame": 3, "frames": frames, "size": [64, 48],
                 "latent_shape": [frames, 4, 16, 12], "preprocessing": preprocessing, "vae": "tiny", "seed": 0,
                 "clip_index": 0}  # fmt: skip
        append_manifest_entry(manifest_path(root, rank), entry)
    return image, latents


def test_items_come_from_the_manifest_and_batch(tmp_path):
    image, latents = write_clip(tmp_path, "b", seed=1)
    write_clip(tmp_path, "a", seed=2)
    write_clip(tmp_path, "stray", manifest=False)  # tensors of a clip whose manifest line never landed
    dataset = LatentVideoDataset(tmp_path, frames=6, preprocessing="standard")
    assert dataset.names == ["a", "b"] and dataset.preprocessing == "standard"
    item = dataset[1]
    assert item["name"] == "b"
    torch.testing.assert_close(item["image"], image)
    torch.testing.assert_close(item["latents"], latents[:6])  # the first frames: frame 0 is the image's
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, 64, 48) and batch["latents"].shape == (2, 6, 4, 16, 12)
    assert list(batch["name"]) == ["a", "b"]


def test_wrong_preprocessing_names_the_folder_and_the_fix(tmp_path):
    write_clip(tmp_path, "a", preprocessing="legacy")
    with pytest.raises(ValueError, match=r"preprocessing legacy .* 'standard'.*--preprocessing standard"):
        LatentVideoDataset(tmp_path, preprocessing="standard")


def test_original_layout_without_manifest_is_legacy(tmp_path):
    write_clip(tmp_path, "clip", manifest=False)
    write_clip(tmp_path, "look_image", manifest=False)  # a video literally named look_image.mp4
    dataset = LatentVideoDataset(tmp_path, preprocessing="legacy")
    assert dataset.names == ["clip", "look_image"] and dataset[0]["latents"].shape == (8, 4, 16, 12)
    with pytest.raises(ValueError, match="no manifest.jsonl: taken as the original"):
        LatentVideoDataset(tmp_path, preprocessing="standard")


def test_too_few_frames_is_refused_with_the_fix(tmp_path):
    write_clip(tmp_path, "a", frames=8)
    with pytest.raises(ValueError, match="fewer than 10 frames.*--frames 10"):
        LatentVideoDataset(tmp_path, frames=10)
    (tmp_path / "manifest.jsonl").unlink()
    dataset = LatentVideoDataset(tmp_path, frames=10)  # original layout: checked when loaded
    with pytest.raises(ValueError, match=r"a\.pt holds 8 frames, fewer than the 10"):
        dataset[0]


def test_unloadable_and_missing_files_are_named(tmp_path):
    write_clip(tmp_path, "a")
    (tmp_path / "a.pt").write_bytes(b"not a tensor")
    with pytest.raises(ValueError, match=r"cannot read .*a\.pt.*re-project"):
        LatentVideoDataset(tmp_path)[0]
    (tmp_path / "a_image.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"a_image\.pt"):
        LatentVideoDataset(tmp_path)


def test_shapes_must_match_the_manifest(tmp_path):
    write_clip(tmp_path, "a")
    torch.save(torch.zeros(8, 4, 8, 8), tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"latents are \[8, 4, 8, 8\], manifest says \[8, 4, 16, 12\]"):
        LatentVideoDataset(tmp_path)[0]


def test_shapes_must_fit_the_model_without_a_manifest(tmp_path):
    write_clip(tmp_path, "a", manifest=False)
    write_clip(tmp_path, "b", manifest=False)
    torch.save(torch.zeros(8, 4, 8, 8), tmp_path / "b.pt")
    torch.save(torch.zeros(3, 32, 24), tmp_path / "a_image.pt")
    dataset = LatentVideoDataset(tmp_path, latent_shape=(4, 16, 12), image_size=(64, 48))
    with pytest.raises(ValueError, match=r"a_image\.pt: an image of shape \[3, 32, 24\], but the model takes \[3, 64, 48\]"):
        dataset[0]
    with pytest.raises(ValueError, match=r"b\.pt: latents of shape \[8, 4, 8, 8\], but the model takes \[F, 4, 16, 12\]"):
        dataset[1]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="project_latent_space.py"):
        LatentVideoDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds no projected clips"):
        LatentVideoDataset(tmp_path)


def test_manifest_survives_a_partial_line_and_merges_rank_files(tmp_path):
    write_clip(tmp_path, "a", rank=0)
    write_clip(tmp_path, "b", rank=1)
    with open(manifest_path(tmp_path, 1), "a") as f:
        f.write('{"name": "c", "sou')  # a crash mid-append
    assert sorted(read_manifest(tmp_path)) == ["a", "b"]
    write_clip(tmp_path, "d", rank=1)  # the next append closes the partial line off instead of extending it
    with pytest.warns(UserWarning, match=r"manifest\.rank1\.jsonl:2"):
        assert sorted(read_manifest(tmp_path)) == ["a", "b", "d"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merge_manifests(tmp_path)
    assert [p.name for p in tmp_path.glob("manifest*")] == ["manifest.jsonl"]
    assert (tmp_path / "manifest.jsonl").read_text().count("\n") == 3
    assert LatentVideoDataset(tmp_path).names == ["a", "b", "d"]


def test_merging_removes_what_a_killed_merge_left(tmp_path):
    write_clip(tmp_path, "a", rank=0)
    leftover = tmp_path / ".manifest.jsonl.k1ll3d00.tmp"  # atomic_write's temporary file, as a kill -9 leaves it
    leftover.write_text('{"name": "a", "sou')
    merge_manifests(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "a_image.pt", "manifest.jsonl"]
