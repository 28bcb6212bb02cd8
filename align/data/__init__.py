"""The data layer: read sources (local files or hub ids), normalise chat formats, validate, mix.

    from align.data import DataMixture, DataSource, load_mixture
    mixture = DataMixture(kind="sft", sources=[DataSource("HuggingFaceH4/ultrachat_200k", train_split="train_sft",
                                                          test_split="test_sft", weight=0.5)])
    splits, report = load_mixture(mixture)   # DatasetDict with "train" and "test" (possibly empty), DataReport
    report.as_dict()                         # counts per source, split and drop reason, for run.json

Output rows (TRL's conversational formats; messages are exactly {"role", "content"}, roles system/user/assistant):
    sft:        {"messages": [...]}
    preference: {"prompt": [... ending with a user turn], "chosen": [assistant ...], "rejected": [assistant ...]}

Every row read is either kept or dropped under one of `DROP_REASONS`; with `strict=True` the structural ones
(`STRUCTURAL_REASONS`: invalid_json, missing_field, wrong_type, unknown_role, wrong_role_order, prompt_mismatch)
raise `DataError` naming the file, row and field instead. Given the trainer's cut (`truncation.TrainerTruncation`),
rows it would drop as fully masked after truncation are dropped and counted here, so the counts are what trains.
The stages train on *prepared* data (`prepare.prepare_data`): the same rows and counts, tokenised, cut and packed
as TRL's trainers take them, by worker processes over the node's cores, kept on disk under a key of everything
that shapes them (`fingerprint`) and shared by ranks and relaunches.

Modules: `spec` (the dataclasses), `sources` (readers), `formats` (normalisers), `validation` (checks),
`truncation` (the trainer's max_length), `report` (counts), `mixing` (`load_mixture`), `encoding` (rows to token
ids as TRL makes them), `fingerprint` (the key of prepared data), `prepare` (`prepare_data`).
"""

from .errors import DROP_REASONS, STRUCTURAL_REASONS, DataError
from .formats import FEATURES
from .mixing import load_mixture
from .report import DataReport
from .sources import source_location
from .spec import DataMixture, DataSource

__all__ = ["DataError", "DataMixture", "DataReport", "DataSource", "DROP_REASONS", "FEATURES", "STRUCTURAL_REASONS",
           "load_mixture", "source_location"]
