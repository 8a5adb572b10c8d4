"""One dataclass holds every choice that defines a model and its training; the paper's Table 2 rows are named
instances of it (`CONFIGS`). The model in `model/model.py` is assembled from a config alone."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ModelConfig:
    name: str = "gen-cls-m3h-att"
    # --- inputs ---------------------------------------------------------------------------------------------
    use_text: bool = True            # False only for the image-only classifiers (CLS-VGG-*, CLS-BUTD-*)
    image_wordings: bool = True      # append the OCR tokens to the post after a `<sep>` token
    vision: str = "vgg"              # "vgg" (49 x 512 grid), "butd" (36 x 2048 objects) or "none"
    use_attributes: bool = True      # top-5 attribute words, embedded with the text table
    # The post's sentence embedding (the shards' `text_embedding` group, which every split then needs) as one
    # more modality of one position: c_fuse gains its projection and M3H-Att's attention from it over the words
    # and from the pooled text to it, so the classifier and the decoder read it.
    text_embedding_modality: bool = False
    max_vocab: int = 45000           # encoder vocabulary cap (train split), specials not counted
    max_src_len: int = 100           # post tokens first, OCR fills the rest; the paper's posts are ~27 tokens
    # --- text encoder ---------------------------------------------------------------------------------------
    emb_dim: int = 200
    hidden: int = 300                # Bi-GRU output size (hidden/2 per direction) and the model size
    enc_layers: int = 2
    # light dropout: at higher rates the classifier fits its labels far more slowly, for no better DEV F1@1
    # (docs/results.md, "What changed before that", item 2)
    dropout: float = 0.1             # between GRU layers, on the fused vector and in the output MLPs
    emb_dropout: float = 0.1
    # --- fusion (c_fuse) ------------------------------------------------------------------------------------
    # "pool": projections of each modality's pooled vector are summed (CLS-AVG/MAX, CLS-VGG-*).
    # "text-query": the pooled text attends over the other modalities (CLS-IMG-ATT).
    # "both": pairwise co-attention text<->vision and text<->attributes in both directions (CLS-CO-ATT, M3H-Att).
    # "ban": bilinear attention between the words and the image regions (CLS-BAN, model/ban.py).
    fusion: str = "both"
    pool: str = "max"                # holistic query per modality: "max" or "avg"
    heads: int = 4
    head_dim: int = 64
    text_layers: int = 4             # stacked blocks attending over the text
    vision_layers: int = 1           # ... over the vision regions
    attr_layers: int = 1             # ... over the attributes
    ban_glimpses: int = 8            # bilinear attention maps ("ban" fusion; Kim et al.'s public default)
    ban_rank: int = 3                # low-rank factor k of the bilinear pooling
    # --- latent topics (model/topic.py; CLS-TMN, GEN-TOPIC) -------------------------------------------------
    topics: int = 0                  # topics of the neural topic model over the post's bag of words (0: none)
    topic_bow_size: int = 10000      # its vocabulary: the most frequent training words that are not stop words
    topic_memory: bool = False       # TMN: the classifier reads the words through the topic memory, not the GRU
    topic_memory_dim: int = 150      # TMN's memory size
    topic_decoder: bool = False      # TAKG: the post's topic representation joins the decoder's output layer
    topic_weight: float = 1.0        # the topic model's loss (its ELBO) in the training loss
    # --- outputs --------------------------------------------------------------------------------------------
    classifier: bool = True          # 2-layer MLP over the keyphrase label vocabulary
    generator: bool = True           # GRU decoder with Bahdanau attention
    copy: bool = True                # pointer-generator copy from the source tokens
    aggregate: bool = True           # Eq. 11: the classifier's top-K labels as a second copy distribution
    fuse_into_decoder: bool = True   # add c_fuse to the decoder's attention context
    agg_top_k: int = 5
    agg_weight: float = 0.5          # b in Eq. 11 after warm-up (a = 1 - b); 0 during warm-up
    min_label_count: int = 1         # keyphrases seen fewer times in train are not classifier labels
    # --- training -------------------------------------------------------------------------------------------
    joint_training: bool = True      # classification NLL + gamma x generation NLL (Eq. 12)
    gamma: float = 1.0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip: float = 5.0
    epochs: int = 15                 # upper bound; early stopping usually ends sooner
    warmup_epochs: int = 2           # stage 1 (a = 1, b = 0) before aggregation is switched on
    freeze_classifier: bool = False  # the authors' stage 2: freeze encoder + classifier once aggregation is on
    patience: int = 3                # epochs without DEV improvement before stopping
    select_on: str = "f1@1"          # DEV criterion for the best checkpoint: "f1@1" or "loss"
    # A batch whose loss or gradient is not finite: "stop" the run with an error (nothing is stepped), or
    # "skip" the batch (counted per epoch in train.log as skipped_batches).
    on_nonfinite: str = "stop"
    # --- decoding and ranking -------------------------------------------------------------------------------
    beam: int = 10
    max_kp_len: int = 6
    n_best: int = 10                 # ranked keyphrases written per post
    # "generator": the beam's order; "classifier": label order; "unified": by
    #   q_gen + rank_cls_weight x P_cls + rank_mem_weight x P_mem, where q_gen is the softmax of the beam
    #   hypotheses' length-normalised log P over the post's hypotheses (model/beam.py `rank`); "learned": by a
    #   linear function of each candidate's features (the sides' scores and more; model/ranker.py)
    ranking: str = "unified"
    rank_cls_weight: float = 0.2
    rank_mem_weight: float = 1.5
    # the learned ranking's, one per feature of ranker.RANK_FEATURES; before they are fitted, the unified
    # ranking's weights (generator 1, classifier 0.2, memory 1.5): its candidates in its order, then the
    # centroids' others
    rank_feature_weights: list[float] = field(default_factory=lambda: [1.0, 0.2, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    # choose the ranking's weights on DEV at every epoch: the unified ranking's two from train.RANK_WEIGHT_GRID,
    # the learned ranking's fitted (ranker.fit)
    tune_rank_weight: bool = True
    # --- keyphrase memory (model/memory.py; not in the paper) -----------------------------------------------
    # The unified ranking also hears the keyphrases of the training posts most similar to the post (TF-IDF
    # cosine over post + OCR words and image attributes); what it adds: docs/results.md, "What each part of the
    # ranking adds".
    memory: bool = True
    memory_k: int = 20               # nearest training posts that vote
    memory_power: float = 2.0        # a neighbour's vote is its similarity to this power
    # Hybrid similarity: (1 - w) x TF-IDF cosine + w x cosine of the posts' sentence embeddings (the shards'
    # `text_embedding` group, which every split then needs), finding neighbours on one topic in other words.
    memory_embedding: bool = False
    memory_embedding_weight: float = 0.3   # w; chosen on DEV (train.MEMORY_EMBEDDING_GRID) when tune_rank_weight

    def __post_init__(self):
        choices = {"vision": ("vgg", "butd", "none"), "fusion": ("pool", "text-query", "both", "ban"),
                   "pool": ("max", "avg"), "select_on": ("f1@1", "loss"), "on_nonfinite": ("stop", "skip"),
                   "ranking": ("generator", "classifier", "unified", "learned")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config {key}={getattr(self, key)!r}: expected one of {allowed}")
        if not (self.classifier or self.generator):
            raise ValueError("a model needs a classifier, a generator or both")
        if not (self.use_text or self.vision != "none"):
            raise ValueError("a model needs the text or the vision modality")
        if self.aggregate and not (self.classifier and self.generator and self.copy):
            raise ValueError("aggregation (Eq. 11) needs the classifier, the generator and the copy switch")
        if self.generator and not self.use_text:
            raise ValueError("the generator decodes over the text memory: use_text must be true")
        if self.fusion == "ban" and not (self.use_text and self.vision != "none"):
            raise ValueError("bilinear attention fuses the words with the image regions: it needs both")
        if (self.topic_memory or self.topic_decoder) and self.topics <= 0:
            raise ValueError("topic_memory and topic_decoder need the topic model: set topics > 0")
        if self.topic_decoder and not self.generator:
            raise ValueError("topic_decoder feeds the generator: generator must be true")
        if self.text_embedding_modality and not self.use_text:
            raise ValueError("text_embedding_modality embeds the post's text: use_text must be true")
        if self.topic_memory and not self.use_text:
            raise ValueError("the topic memory reads the post's words: use_text must be true")
        if not self.classifier and self.ranking != "generator":
            self.ranking = "generator"
        if not self.generator and self.ranking != "classifier":
            self.ranking = "classifier"
        if self.memory_embedding and not self.memory:
            raise ValueError("memory_embedding is the keyphrase memory's similarity: it needs memory true")
        if self.memory and self.ranking not in ("unified", "learned"):
            raise ValueError(f"the keyphrase memory ranks with the unified or the learned ranking, which need the "
                             f"classifier and the generator (ranking is {self.ranking!r}): set memory to false")
        if self.ranking == "learned" and not self.memory_embedding:
            raise ValueError("the learned ranking reads the keyphrase memory and its label centroids of the posts' "
                             "sentence embeddings: it needs memory and memory_embedding true")

    @property
    def uses_text_embedding(self) -> bool:
        """Whether the model reads the posts' sentence embeddings (the shards' `text_embedding` group): every
        split it trains, predicts or tags on then needs them, from the model that embedded its training posts."""
        return self.memory_embedding or self.text_embedding_modality

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _variant(base: ModelConfig, name: str, **changes) -> ModelConfig:
    return dataclasses.replace(base, name=name, **changes)


# one head alone (the classifier, the generator): the other head off, and what needs both heads with it
_CLS = dict(generator=False, copy=False, aggregate=False, joint_training=False, ranking="classifier",
            warmup_epochs=0, memory=False)
_GEN = dict(classifier=False, aggregate=False, joint_training=False, ranking="generator", warmup_epochs=0,
            memory=False)
_TEXT_ONLY = dict(vision="none", use_attributes=False)
_FULL = ModelConfig()

# The paper's Table 2 rows, lower-case with dashes. Image-wording and joint-training switches are the fields
# `image_wordings` and `joint_training`; e.g. `gen-m3h-att` + `{"joint_training": true}` is a JSON config file.
CONFIGS: dict[str, ModelConfig] = {
    **{f"cls-{vis}-{pool}": _variant(_FULL, f"cls-{vis}-{pool}", use_text=False, image_wordings=False,
                                      use_attributes=False, vision=vis, fusion="pool", pool=pool, **_CLS)
       for vis in ("vgg", "butd") for pool in ("max", "avg")},
    "cls-avg": _variant(_FULL, "cls-avg", fusion="pool", pool="avg", image_wordings=False, **_TEXT_ONLY, **_CLS),
    "cls-max": _variant(_FULL, "cls-max", fusion="pool", pool="max", image_wordings=False, **_TEXT_ONLY, **_CLS),
    # TMN (Zeng et al., 2018) and TAKG (Wang et al., 2019a): 50 topics as in their papers and public code
    "cls-tmn": _variant(_FULL, "cls-tmn", fusion="pool", pool="max", image_wordings=False, topics=50,
                        topic_memory=True, **_TEXT_ONLY, **_CLS),
    "gen-att": _variant(_FULL, "gen-att", copy=False, fuse_into_decoder=False, image_wordings=False, **_TEXT_ONLY,
                        **_GEN),
    "gen-copy": _variant(_FULL, "gen-copy", fuse_into_decoder=False, image_wordings=False, **_TEXT_ONLY, **_GEN),
    "gen-topic": _variant(_FULL, "gen-topic", fuse_into_decoder=False, image_wordings=False, topics=50,
                          topic_decoder=True, **_TEXT_ONLY, **_GEN),
    "cls-img-att": _variant(_FULL, "cls-img-att", fusion="text-query", heads=1, head_dim=256, text_layers=1,
                            use_attributes=False, image_wordings=False, **_CLS),
    "cls-co-att": _variant(_FULL, "cls-co-att", fusion="both", heads=1, head_dim=256, text_layers=1,
                           use_attributes=False, image_wordings=False, **_CLS),
    "cls-ban": _variant(_FULL, "cls-ban", fusion="ban", use_attributes=False, image_wordings=False, **_CLS),
    "cls-m3h-att": _variant(_FULL, "cls-m3h-att", **_CLS),
    "gen-m3h-att": _variant(_FULL, "gen-m3h-att", **_GEN),
    "gen-cls-m3h-att": _FULL,
    # the unified model with the hybrid keyphrase memory; its shards need the text_embedding group
    "gen-cls-m3h-att-hybrid": _variant(_FULL, "gen-cls-m3h-att-hybrid", memory_embedding=True),
    # ... ranked by the learned ranking (model/ranker.py): the best measured on the benchmark protocol
    # (docs/results.md)
    "gen-cls-m3h-att-learned": _variant(_FULL, "gen-cls-m3h-att-learned", memory_embedding=True, ranking="learned"),
    # ... and the posts' sentence embeddings as a modality of the encoder
    "gen-cls-m3h-att-hybrid-sentence": _variant(_FULL, "gen-cls-m3h-att-hybrid-sentence", memory_embedding=True,
                                                text_embedding_modality=True),
}
DEFAULT_CONFIG = "gen-cls-m3h-att-learned"


def load_config(name_or_file: str, **overrides) -> ModelConfig:
    """A configuration name from `CONFIGS`, or a JSON file of fields (optionally `"base": NAME`)."""
    if name_or_file in CONFIGS:
        base, fields = CONFIGS[name_or_file], {}
    elif Path(name_or_file).is_file():
        fields = json.loads(Path(name_or_file).read_text())
        base_name = fields.pop("base", DEFAULT_CONFIG)
        if base_name not in CONFIGS:
            raise ValueError(f"{name_or_file}: unknown base configuration {base_name!r}")
        base = CONFIGS[base_name]
        fields.setdefault("name", Path(name_or_file).stem)
    else:
        raise ValueError(f"{name_or_file!r} is neither a configuration name ({', '.join(CONFIGS)}) nor a file")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{name_or_file}: unknown config fields {unknown}")
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(base, **fields)
