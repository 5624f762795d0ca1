"""The built-in colour-digits dataset (files in the imagefolder layout, read by the folder reader) and the
evaluator's colour check."""

import json

import numpy as np
import torch
from PIL import Image
from torch import nn

from fastmmgan.builtin_export import COLOURS, _rows, export_builtin
from fastmmgan.colour_check import caption_colour, ink_colour, text_colour
from fastmmgan.config import TrainConfig
from fastmmgan.data import DIGIT_WORDS, MultimodalDataset
from fastmmgan.evaluator import Evaluator
from fastmmgan.modalities import ModalitySpec
from fastmmgan.prepare import open_dataset


def test_export_writes_an_imagefolder_whose_captions_name_each_images_colour(tmp_path):
    out = export_builtin("colour-digits", tmp_path / "cd")
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 1797 and set(records[0]) == {"image_file_name", "audio_file_name", "caption", "label"}
    images = np.stack([np.asarray(Image.open(out / r["image_file_name"])) for r in records[:300]])
    assert images.shape == (300, 16, 16, 3) and images.dtype == np.uint8
    named = torch.tensor([text_colour(r["caption"]) for r in records[:300]])
    assert (named >= 0).all()
    spec = ModalitySpec("image", "image", image_shape=(16, 16), channels=3)
    read = ink_colour(spec, torch.from_numpy(images.reshape(300, -1) / 255.0))
    assert torch.equal(read, named)  # every image drawn in the colour its caption names
    for r in records[:300]:  # and the digit named too, as a word or a numeral
        assert DIGIT_WORDS[r["label"]] in r["caption"].split() or str(r["label"]) in r["caption"].split()
    assert len({text_colour(r["caption"]) for r in records}) == len(COLOURS)


def test_dataset_colour_digits_goes_through_the_folder_reader(tmp_path):
    ds, prepared = open_dataset(TrainConfig(dataset="colour-digits", cache_dir=str(tmp_path)), progress=False)
    assert prepared is not None and (prepared.cache_dir.parent.parent / "builtin").is_dir()
    assert [(s.name, s.kind) for s in ds.specs] == [("image", "image"), ("audio", "audio"), ("caption", "text")]
    assert ds.specs[0].image_shape == (16, 16) and ds.specs[0].channels == 3 and len(ds) == 1797
    assert ds.specs[1].sample_rate == 8000 and ds.specs[1].clip_samples == 1024
    assert set(ds.labels.tolist()) == set(range(10))
    again, reused = open_dataset(TrainConfig(dataset="colour-digits", cache_dir=str(tmp_path)), progress=False)
    assert reused.reused and torch.equal(again.features[0][:5], ds.features[0][:5])


def test_colour_readers():
    spec = ModalitySpec("image", "image", image_shape=(4, 4), channels=3)
    dark = np.full((4, 4, 3), 0.06)
    faint_blue, green = dark.copy(), dark.copy()
    faint_blue[1:3, 1:3] = np.array(COLOURS["blue"]) / 255 * 0.5  # half as bright still reads blue
    green[:, 2] = np.array(COLOURS["green"]) / 255
    got = ink_colour(spec, torch.tensor(np.stack([faint_blue, green]).reshape(2, -1), dtype=torch.float32))
    names = list(COLOURS)
    assert [names[i] for i in got] == ["blue", "green"]
    text = ModalitySpec("caption", "text", vocab=("a", "red", "blue", "seven"))
    assert caption_colour(text, text.encode(["a red seven", "a blue seven", "a seven", "red blue"])).tolist() == [
        names.index("red"), names.index("blue"), -1, -1]


class _Painter(nn.Module):
    """A stand-in generator: images painted in the colour the given caption names (or always red), and
    captions naming the given image's colour."""

    def __init__(self, specs, always_red=False):
        super().__init__()
        self.specs, self.z_dim, self.always_red = specs, 4, always_red

    def forward(self, z, xs, mask):
        image, text = self.specs
        n = len(z)
        colour = caption_colour(text, xs[1])
        colour = torch.where(mask[:, 1] & (colour >= 0) & (not self.always_red), colour, 0)
        rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[colour] / 255
        pixels = torch.full((n, 16, 16, 3), 0.07)
        pixels[:, 4:12, 6:10] = rgb[:, None, None, :]
        words = torch.zeros(n, len(text.vocab))
        read = ink_colour(image, xs[0])
        for i in range(n):
            words[i, text.vocab.index(list(COLOURS)[int(read[i])])] = 1.0
        return [pixels.reshape(n, -1), words]


def test_the_evaluator_scores_colour_from_the_condition():
    rows = _rows("colour-digits", seed=0)[:240]
    captions = [r[1] for r in rows]
    vocab = tuple(dict.fromkeys(w for c in captions for w in c.split()))
    specs = (ModalitySpec("image", "image", image_shape=(16, 16), channels=3), ModalitySpec("caption", "text", vocab=vocab))
    feats = (torch.from_numpy(np.stack([r[0] for r in rows]).reshape(240, -1) / 255.0).float(), specs[1].encode(captions))
    ds = MultimodalDataset(specs, feats, torch.ones(240, 2, dtype=torch.bool), torch.tensor([r[3] for r in rows]))
    evaluator = Evaluator.build(*ds.split(0.25, seed=0), seed=0)
    right = evaluator.evaluate(_Painter(specs), n=64)
    assert right["colour_acc/caption_to_image"] == 1.0 and right["colour_acc/image_to_caption"] == 1.0
    assert right["colour_acc_real/image"] == 1.0
    red = evaluator.evaluate(_Painter(specs, always_red=True), n=64)
    assert red["colour_acc/caption_to_image"] < 0.4
    assert "colour_acc/caption_to_caption" not in red and "colour_acc/image_to_image" not in red


class _Resampler(nn.Module):
    """A stand-in generator whose caption -> image samples are real training images of the digit and colour the
    caption names, drawn at random: exactly as varied as the data of that condition."""

    def __init__(self, specs, train):
        super().__init__()
        self.specs, self.z_dim, self.pool = specs, 4, train

    def forward(self, z, xs, mask):
        image, text = self.specs
        images, captions = self.pool
        words = text.decode(xs[1])
        gen = torch.Generator().manual_seed(int(z[0, 0].abs() * 1000))
        out = torch.zeros(len(z), image.dim)
        for i, caption in enumerate(words):
            if not bool(mask[i, 1]):
                continue
            digit = next(d for d in range(10) if DIGIT_WORDS[d] in caption.split() or str(d) in caption.split())
            same = [j for j, c in enumerate(captions) if text_colour(c) == text_colour(caption)
                    and (DIGIT_WORDS[digit] in c.split() or str(digit) in c.split())]
            out[i] = images[same[int(torch.randint(len(same), (1,), generator=gen))]]
        return [out, xs[1]]


def test_spread_is_measured_against_samples_of_the_same_digit_and_colour():
    """A caption fixes digit and colour, so real samples of one condition share both: a generator that draws real
    images of the caption's digit and colour has spread near 1 (against the digit alone it would read far lower)."""
    rows = _rows("colour-digits", seed=0)
    captions = [r[1] for r in rows]
    vocab = tuple(dict.fromkeys(w for c in captions for w in c.split()))
    specs = (ModalitySpec("image", "image", image_shape=(16, 16), channels=3), ModalitySpec("caption", "text", vocab=vocab))
    n = len(rows)
    feats = (torch.from_numpy(np.stack([r[0] for r in rows]).reshape(n, -1) / 255.0).float(), specs[1].encode(captions))
    ds = MultimodalDataset(specs, feats, torch.ones(n, 2, dtype=torch.bool), torch.tensor([r[3] for r in rows]))
    train, test = ds.split(0.2, seed=0)
    evaluator = Evaluator.build(train, test, seed=0)
    train_captions = specs[1].decode(train.features[1][:])
    scores = evaluator.evaluate(_Resampler(specs, (train.features[0][:], train_captions)), n=96)
    assert 0.8 < scores["spread/caption_to_image"] < 1.25, scores["spread/caption_to_image"]
