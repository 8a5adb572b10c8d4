"""Reading the pipeline's shards (docs/FORMAT.md) into model inputs: vocabularies, encoded posts, batches.

Text columns of a split are small (a few MB for the paper's 53k posts) and are read once, whole. Image
features are large and are read per post through h5py handles opened lazily in the process that reads them
(a DataLoader worker opens its own), never shared across a fork.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from model.config import ModelConfig

WORD_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"]
PAD, BOS, EOS, UNK, SEP = range(5)          # the same ids in the word and the generator vocabularies
GEN_SPECIALS = WORD_SPECIALS[:4]
FORMAT_VERSION = 1
VISION_DIMS = {"vgg": 512, "butd": 2048}
MAX_ATTRIBUTES = 5


class Vocab:
    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        return self.index.get(word, UNK)


@dataclass
class Post:
    post_id: str
    tokens: list[str]
    ocr: list[str]
    attributes: list[str]
    keyphrases: list[str]
    image_present: bool
    shard: int          # index into the split's shard list (for the lazily read image features)
    row: int


@dataclass
class Split:
    name: str
    posts: list[Post]
    shard_paths: list[Path]
    features: set[str]          # feature groups present in every shard of the split
    random_weights: bool        # some shard holds image features from seeded random weights
    text_embedding: np.ndarray | None = None        # [N, D] float32 unit rows, in `posts` order
    text_embedding_provenance: dict | None = None   # {"weights", "sha256", "meta"} of the model that made them


# What must agree for two sets of text embeddings to be comparable (docs/FORMAT.md).
TEXT_EMBEDDING_META_KEYS = ("pooling", "normalize", "dim", "max_length", "input")


def text_embedding_provenance(attrs) -> dict:
    """The embedding model's record from a shard's attributes (values as h5py returns them)."""
    meta = attrs["text_embedding_meta"]
    return {"weights": str(attrs["text_embedding_weights"]), "sha256": str(attrs["text_embedding_weights_sha256"]),
            "meta": json.loads(meta) if isinstance(meta, (str, bytes)) else dict(meta)}


def check_text_embedding(expected: dict, found: dict, what: str) -> None:
    """Raise unless `found` embeddings were made by the same model, pooling and input as `expected`."""
    differ = [k for k in TEXT_EMBEDDING_META_KEYS if expected["meta"].get(k) != found["meta"].get(k)]
    if expected["sha256"] != found["sha256"] or differ:
        raise ValueError(
            f"{what}: text embeddings from {found['weights']} (sha256 {found['sha256'][:12]}, "
            f"{ {k: found['meta'].get(k) for k in TEXT_EMBEDDING_META_KEYS} }) are not comparable with those of "
            f"{expected['weights']} (sha256 {expected['sha256'][:12]}, "
            f"{ {k: expected['meta'].get(k) for k in TEXT_EMBEDDING_META_KEYS} }): embed them with the same model")


def read_manifest(data_dir: str | Path) -> dict:
    """The dataset's `manifest.json`, which the pipeline writes last: a directory without one is not a complete
    dataset, and nothing in it is read."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} has no manifest.json: not a complete dataset (docs/FORMAT.md); "
                                f"build it, or rerun the build that was interrupted")
    manifest = json.loads(path.read_text())
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version}, this reader knows {FORMAT_VERSION}")
    return manifest


def split_names(data_dir: str | Path) -> list[str]:
    """The splits the dataset's manifest lists with at least one post."""
    return sorted(name for name, counts in read_manifest(data_dir)["splits"].items() if counts["posts"])


_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 of the files this process has checked


def _sha256(path: Path) -> str:
    key = (str(path.resolve()), *((stat := path.stat()).st_size, stat.st_mtime_ns))
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def split_shards(data_dir: str | Path, split: str) -> list[tuple[Path, int]]:
    """(path, number of posts) of each shard of a split, as its manifest lists them: never a directory listing.

    The split manifest is checked against the dataset manifest's checksum, each shard against the split
    manifest's (once per process and file version: reading a split again checks nothing again)."""
    data_dir = Path(data_dir)
    files = {entry["file"]: entry for entry in read_manifest(data_dir)["files"]}
    listed = files.get(f"{split}/manifest.json")
    if listed is None:
        raise FileNotFoundError(f"the manifest of {data_dir} lists no split {split!r}")
    manifest_path = data_dir / split / "manifest.json"
    _check(manifest_path, listed["sha256"])
    shards = json.loads(manifest_path.read_text())["shards"]
    for entry in shards:
        _check(data_dir / split / entry["file"], entry["sha256"])
    return [(data_dir / split / entry["file"], int(entry["num_samples"])) for entry in shards]


def _check(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}, listed in the dataset's manifest, is missing")
    if _sha256(path) != sha256:
        raise ValueError(f"{path} does not match the checksum its manifest gives: changed after the build")


def read_split(data_dir: str | Path, split: str) -> Split:
    """All posts of one split, text columns only, from the shards its manifest lists. Raises if the dataset has
    no manifest, the split is missing, a shard does not match its checksum or count, or is of another format."""
    listed = split_shards(data_dir, split)
    if not listed:
        raise FileNotFoundError(f"the manifest of {data_dir} lists no shard of split {split!r}")
    paths = [path for path, _ in listed]
    posts, features, random_weights = [], None, False
    embeddings, provenance = [], None
    for shard_index, path in enumerate(paths):
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: format_version {version}, this reader knows {FORMAT_VERSION}")
            groups = set(json.loads(f.attrs.get("features", "[]")))
            features = groups if features is None else features & groups
            random_weights |= bool(f.attrs.get("random_weights", False))

            def column(name):
                return f[name].asstr()[()] if name in f else None
            ids, tokens, kps = column("post_id"), column("tokens"), column("keyphrases")
            if len(ids) != listed[shard_index][1]:
                raise ValueError(f"{path}: {len(ids)} posts, its manifest says {listed[shard_index][1]}")
            ocr, attrs = column("ocr_tokens"), column("attributes")
            present = f["image_present"][()]
            if "text_embedding" in groups:
                found = text_embedding_provenance(f.attrs)
                if provenance is None:
                    provenance = found
                check_text_embedding(provenance, found, str(path))
                embeddings.append(f["text_embedding"][()].astype(np.float32))
        for row in range(len(ids)):
            posts.append(Post(
                post_id=ids[row], tokens=tokens[row].split(),
                ocr=ocr[row].split() if ocr is not None else [],
                attributes=attrs[row].split()[:MAX_ATTRIBUTES] if attrs is not None else [],
                keyphrases=[k.strip() for k in kps[row].split(";") if k.strip()],
                image_present=bool(present[row]), shard=shard_index, row=row))
    features = features or set()
    if "text_embedding" not in features:
        return Split(split, posts, paths, features, random_weights)
    return Split(split, posts, paths, features, random_weights, np.concatenate(embeddings), provenance)


@dataclass
class Vocabularies:
    """Built from the train split only. `words`: encoder inputs and embeddings; `gen`: the generator's output
    words (the training keyphrases' words; anything else reaches the output by copying); `labels`: the
    classifier's classes, label 0 = a keyphrase outside them."""
    words: Vocab
    gen: Vocab
    labels: Vocab
    gen_to_word: list[int] = field(default_factory=list)
    label_gen_words: list[list[int]] = field(default_factory=list)   # each label's words as generator ids

    def __post_init__(self):
        self.gen_to_word = [self.words.id(w) for w in self.gen.words]
        self.label_gen_words = [[self.gen.id(w) for w in label.split()] for label in self.labels.words]

    @classmethod
    def build(cls, train: Split, config: ModelConfig) -> "Vocabularies":
        word_counts, kp_word_counts, label_counts = Counter(), Counter(), Counter()
        for post in train.posts:
            word_counts.update(post.tokens)
            if config.image_wordings:
                word_counts.update(post.ocr)
            if config.use_attributes:
                word_counts.update(post.attributes)
            for kp in post.keyphrases:
                kp_word_counts.update(kp.split())
                label_counts[kp] += 1
        word_counts.update(kp_word_counts)
        # most_common is a stable sort: ties keep first-seen order, so vocabularies are deterministic.
        words = [w for w, _ in word_counts.most_common() if w not in WORD_SPECIALS][:config.max_vocab]
        gen = [w for w, _ in kp_word_counts.most_common() if w not in WORD_SPECIALS]
        labels = [k for k, c in label_counts.most_common() if c >= config.min_label_count]
        return cls(Vocab(WORD_SPECIALS + words), Vocab(GEN_SPECIALS + gen), Vocab(["<unk>"] + labels))

    def to_dict(self) -> dict:
        return {"words": self.words.words, "gen": self.gen.words, "labels": self.labels.words}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabularies":
        return cls(Vocab(d["words"]), Vocab(d["gen"]), Vocab(d["labels"]))


@dataclass
class Example:
    """One post as id lists. Copy ids (`src_ext`, targets) are generator ids, or len(gen) + j for the post's
    j-th source word outside the generator vocabulary (`oov`, first-occurrence order)."""
    index: int
    src: list[int]
    src_ext: list[int]
    oov: list[str]
    oov_word_ids: list[int]
    attrs: list[int]
    dec_in: list[list[int]]     # per keyphrase: <bos> w1 .. wn as word ids (the decoder's inputs)
    dec_out: list[list[int]]    # per keyphrase: w1 .. wn <eos> as copy ids (the targets; <unk> for a word outside
                                # the generator vocabulary that the model cannot copy)
    labels: list[int]           # per keyphrase: its class id (0 = not a class)


def source_tokens(post: Post, config: ModelConfig) -> list[str]:
    """The source the encoder reads: the post's tokens, then `<sep>` and its OCR tokens (image wordings)."""
    tokens = post.tokens[:config.max_src_len]
    if config.image_wordings and post.ocr and len(tokens) + 1 < config.max_src_len:
        tokens = tokens + ["<sep>"] + post.ocr[:config.max_src_len - len(tokens) - 1]
    return tokens or ["<unk>"]      # an empty post still has one position to attend to


def encode_post(post: Post, index: int, vocabs: Vocabularies, config: ModelConfig) -> Example:
    tokens = source_tokens(post, config)
    n_gen = len(vocabs.gen)
    oov: dict[str, int] = {}
    src_ext = []
    for w in tokens:
        gid = vocabs.gen.index.get(w)
        if gid is None:
            gid = n_gen + oov.setdefault(w, len(oov))
        src_ext.append(gid)
    dec_in, dec_out, labels = [], [], []
    for kp in post.keyphrases:
        words = kp.split()
        dec_in.append([BOS] + [vocabs.words.id(w) for w in words])
        dec_out.append([vocabs.gen.index.get(w, n_gen + oov[w] if config.copy and w in oov else UNK)
                        for w in words] + [EOS])
        labels.append(vocabs.labels.index.get(kp, 0))
    attrs = [vocabs.words.id(w) for w in post.attributes] if config.use_attributes else []
    return Example(index, [vocabs.words.id(w) for w in tokens], src_ext, list(oov),
                   [vocabs.words.id(w) for w in oov], attrs, dec_in, dec_out, labels)


class ImageFeatures:
    """Per-post reads of one feature group; the h5py files are opened on first use in each process.

    A read fetches the post's one chunk (docs/FORMAT.md: one sample per chunk, uncompressed) straight into a
    new float16 array with H5Dread_chunk, skipping h5py's per-call selection set-up, which cost more than the
    read itself. The float16 -> float32 conversion happens once, in `collate`, while copying into the batch."""

    def __init__(self, paths: list[Path], group: str):
        self.paths, self.group = [str(p) for p in paths], group
        self._shards, self._pid = None, None

    def __getstate__(self):
        return {"paths": self.paths, "group": self.group, "_shards": None, "_pid": None}

    def _open(self, path: str) -> tuple:
        f = h5py.File(path, "r")  # open for the worker's lifetime: read() seeks into it for every post
        dataset = f[self.group]
        sample_shape, chunks = dataset.shape[1:], dataset.chunks
        filters = dataset.id.get_create_plist().get_nfilters()
        if chunks != (1,) + sample_shape or filters:
            f.close()
            raise ValueError(f"{path}: {self.group} has chunks {chunks} and {filters} filters; "
                             f"docs/FORMAT.md requires one uncompressed sample per chunk, "
                             f"(1, {', '.join(map(str, sample_shape))})")
        # BUTD rows past the post's box count are zero padding; the counts are small, read whole.
        regions = f["butd_num_boxes"][()].astype(np.int64) if self.group == "butd" else None
        return f, dataset.id, sample_shape, dataset.dtype, regions

    def read(self, shard: int, row: int) -> tuple[torch.Tensor, int]:
        """The post's features as a float16 tensor (regions, dim) and how many regions are real."""
        if self._shards is None or self._pid != os.getpid():
            self._shards, self._pid = [self._open(p) for p in self.paths], os.getpid()
        _, dataset_id, sample_shape, dtype, regions = self._shards[shard]
        features = np.empty(sample_shape, dtype)
        dataset_id.read_direct_chunk((row,) + (0,) * len(sample_shape), out=features.reshape(-1).view(np.uint8))
        return torch.from_numpy(features), sample_shape[0] if regions is None else int(regions[row])


class PostDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, vocabs: Vocabularies, config: ModelConfig):
        self.split, self.config = split, config
        self.examples = [encode_post(p, i, vocabs, config) for i, p in enumerate(split.posts)]
        self.vision = None
        if config.vision != "none" and config.vision in split.features:
            self.vision = ImageFeatures(split.shard_paths, config.vision)
        self.text_embedding = None                  # [N, D] the posts' sentence embeddings, where the config uses them
        if config.uses_text_embedding:
            if split.text_embedding is None:
                raise ValueError(f"config {config.name} reads the posts' sentence embeddings, "
                                 f"but split {split.name!r} has no text_embedding group: rebuild the dataset with "
                                 f"it (BuildDataset --features '[..., \"text_embedding\"]')")
            self.text_embedding = torch.from_numpy(split.text_embedding)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        post = self.split.posts[i]
        image = None
        if self.vision is not None and post.image_present:
            image = self.vision.read(post.shard, post.row)
        embedding = self.text_embedding[i] if self.text_embedding is not None else None
        return self.examples[i], image, embedding


@dataclass
class Batch:
    index: torch.Tensor         # [B] positions in the split
    src: torch.Tensor           # [B, L] word ids, PAD-padded
    src_len: torch.Tensor       # [B]
    src_ext: torch.Tensor       # [B, L] copy ids
    oov_word_ids: torch.Tensor  # [B, n_oov] word ids of each post's copy-only words (PAD-padded)
    attrs: torch.Tensor         # [B, A] attribute word ids (A may be 0)
    vision: torch.Tensor | None         # [B, R, D] image features (zeros where absent, masked by vision_mask)
    vision_mask: torch.Tensor | None    # [B, R] True on real regions of present images
    dec_in: torch.Tensor        # [N, T] one row per (post, keyphrase)
    dec_out: torch.Tensor       # [N, T]
    kp_post: torch.Tensor       # [N] the row's post in the batch
    labels: torch.Tensor        # [N]
    oov: list[list[str]]
    text_embedding: torch.Tensor | None = None  # [B, D] the posts' sentence embeddings, where the config uses them

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in vars(self).items()}
        return Batch(**moved)

    @property
    def n_oov(self) -> int:
        return self.oov_word_ids.shape[1]


def pad_rows(rows: list[list[int]], value: int = PAD, min_len: int = 0) -> torch.Tensor:
    width = max([len(r) for r in rows] + [min_len])
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(items) -> Batch:
    examples = [e for e, _, _ in items]
    images = [img for _, img, _ in items]
    embeddings = [emb for _, _, emb in items]
    vision = vision_mask = None
    known = [img for img in images if img is not None]
    if known:
        regions, dim = known[0][0].shape
        vision = torch.zeros(len(items), regions, dim)
        vision_mask = torch.zeros(len(items), regions, dtype=torch.bool)
        for i, img in enumerate(images):
            if img is not None:
                vision[i] = img[0]          # float16 -> float32 in the copy
                vision_mask[i, :img[1]] = True
    kp_rows = [(i, din, dout, lab) for i, e in enumerate(examples)
               for din, dout, lab in zip(e.dec_in, e.dec_out, e.labels)]
    return Batch(
        index=torch.tensor([e.index for e in examples]),
        src=pad_rows([e.src for e in examples]),
        src_len=torch.tensor([len(e.src) for e in examples]),
        src_ext=pad_rows([e.src_ext for e in examples]),
        oov_word_ids=pad_rows([e.oov_word_ids for e in examples]),
        attrs=pad_rows([e.attrs for e in examples]),
        vision=vision, vision_mask=vision_mask,
        dec_in=pad_rows([r[1] for r in kp_rows], min_len=1),
        dec_out=pad_rows([r[2] for r in kp_rows], min_len=1),
        kp_post=torch.tensor([r[0] for r in kp_rows], dtype=torch.long),
        labels=torch.tensor([r[3] for r in kp_rows], dtype=torch.long),
        oov=[e.oov for e in examples],
        text_embedding=torch.stack(embeddings) if embeddings and embeddings[0] is not None else None)


class LengthBatches(torch.utils.data.Sampler):
    """Batches of posts of similar source length (less padding in the GRU). Shuffled: posts are shuffled,
    sorted by length within windows of 50 batches, cut into batches, and the batches shuffled."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, share=None):
        self.lengths, self.batch_size, self.shuffle = lengths, batch_size, shuffle
        self.rng = random.Random(seed)
        self.share = share          # global batch -> this process's posts of it (data-parallel training)

    def __iter__(self):
        order = list(range(len(self.lengths)))
        if self.shuffle:
            self.rng.shuffle(order)
        window = self.batch_size * 50
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            self.rng.shuffle(batches)
        return iter(batches if self.share is None else [self.share(b) for b in batches])

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def state_dict(self) -> dict:
        """The shuffling state: a resumed run draws the epochs' orders an uninterrupted run would."""
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def make_loader(dataset: PostDataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0, share=None):
    sampler = LengthBatches([len(e.src) for e in dataset.examples], batch_size, shuffle, seed, share)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
