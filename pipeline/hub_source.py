"""Hugging Face hub datasets as document sources: `--source hf:NAME[:SUBSET]`.

A hub dataset is pinned to the commit it had when the output was started, so a resume reads the
same documents. Its data files, in the order the dataset's config lists them, are read directly
from the hub (`hf://` paths through fsspec) by a pipeline.file_source.FileSource, streamed, never
downloaded whole; parquet footers let a resume or a Slurm array task start at any file or row
group without reading what comes before. A hub `.txt` file means what it means to `datasets`:
one document per line. A hub dataset whose files are in other formats is streamed through
`datasets` instead (HubStreamSource). Every hub request is retried through outages
(pipeline/retry.py), each ranged read of a file on its own: on a flaky network the run advances
at the pace of the requests that succeed.

The hub libraries (huggingface_hub, datasets, pipeline/hub_client.py) are imported inside the
functions that use them, so that a local source never loads them.
"""

import posixpath
import sys
from functools import partial

from pipeline.output import no_space_behind
from pipeline.retry import HubUnreachable, RetriesExhausted, causes, describe
from pipeline.file_source import FileSource
from pipeline.sources import SourceError, file_kind


def parse_hub_spec(spec):
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 2:
        raise SourceError(f"--source {spec}: expected hf:NAME or hf:NAME:SUBSET")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def hub_fingerprint(spec, split, revision, text_field):
    """What a hub source's documents are a function of: without the network, from a manifest's
    pinned revision, a rerun can tell that a folder is complete."""
    name, subset = parse_hub_spec(spec)
    return f"hf:{name}:{subset or ''}:{split}@{revision}#{text_field}"


def hub_error(spec, name, e):
    full = no_space_behind(e, causes)
    if full is not None:  # the hub's cache: a full disk, not a wrong name
        from huggingface_hub import constants

        return OSError(full.errno, full.strerror, f"{constants.HF_HOME} (HF_HOME, the hub's "
                       "cache: it may point to any disk with room)")
    return SourceError(f"--source {spec}: cannot read dataset {name!r} from the Hugging Face hub "
                       f"({describe(e)}); check the name, or pass a local file/folder")


def mention_hf_token():
    from huggingface_hub import get_token

    if get_token() is None:
        print("note: HF_TOKEN is not set: anonymous hub requests get lower rate limits; create a "
              "read token at https://huggingface.co/settings/tokens and `export HF_TOKEN=hf_...`",
              file=sys.stderr)


def hub_file_sizes(files, retry):
    """Size of each hf:// file, from one listing per folder (for the progress bar's ETA)."""
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem()
    sizes = {}
    for folder in dict.fromkeys(posixpath.dirname(f) for f in files):
        for entry in retry.call(f"listing {folder}", fs.ls, folder, detail=True):
            sizes["hf://" + entry["name"].removeprefix("hf://")] = entry["size"]
    return [sizes[f] for f in files] if all(f in sizes for f in files) else None


def open_hub_source(spec, text_field, split, revision, retry):
    from huggingface_hub import HfApi

    import datasets

    from pipeline.hub_client import configure_hub_client, load_with_retries

    name, subset = parse_hub_spec(spec)
    try:
        configure_hub_client()
    except HubUnreachable as e:
        raise HubUnreachable(f"--source {spec}: {e}") from None
    try:
        revision = revision or retry.call(f"dataset info of {name}",
                                          lambda: HfApi().dataset_info(name, timeout=20).sha)
        builder = load_with_retries(f"config of {name}", datasets.load_dataset_builder, name,
                                    subset, revision, retry)
        data_files = builder.config.data_files or {}
        files = [str(f) for f in data_files.get(split, [])]
        readable = bool(files) and all(file_kind(f) for f in files)
        sizes = hub_file_sizes(files, retry) if readable else None
    except (RetriesExhausted, HubUnreachable):
        raise
    except Exception as e:  # unknown name or subset, gated: all end the same way
        raise hub_error(spec, name, e) from None
    mention_hf_token()
    fingerprint = hub_fingerprint(spec, split, revision, text_field)
    splits = builder.info.splits
    num_documents = splits[split].num_examples if splits and split in splits else None
    if split not in data_files:
        raise SourceError(f"--source {spec}: no split {split!r} (splits: "
                          f"{', '.join(data_files) or 'none listed'}); pass --split NAME")
    if readable:  # in the config's order, as `datasets` reads them: pattern by pattern
        return FileSource(spec, files, text_field, fingerprint, revision, num_documents,
                          sizes=sizes, retry=retry)
    return HubStreamSource(spec, name, subset, split, text_field, fingerprint, revision,
                           num_documents, retry)


class HubStreamSource:
    """A hub dataset in formats we do not read ourselves, streamed by `datasets`.

    A reconnection after a failure starts from the state `datasets` recorded at the last document
    read (IterableDataset.state_dict): the files before the current one are not read again, the
    current one is, from its start, as `datasets` can only skip within a file. A resume in a new
    process streams past the documents already read (skip). Slurm arrays need a FileSource.
    """
    files = None
    num_bytes = None
    bytes_read = 0

    def __init__(self, spec, name, subset, split, text_field, fingerprint, revision, num_documents,
                 retry):
        self.spec, self.name, self.text_field = spec, name, text_field
        self.fingerprint, self.revision, self.num_documents = fingerprint, revision, num_documents
        self.retry = retry
        self._resume_point = None  # (documents read, the stream that read them, its state)
        import datasets

        from pipeline.hub_client import load_with_retries

        try:
            self.dataset = load_with_retries(
                f"opening {spec}", partial(datasets.load_dataset, split=split, streaming=True),
                name, subset, revision, retry)
        except (RetriesExhausted, HubUnreachable):
            raise
        except Exception as e:
            raise hub_error(spec, name, e) from None

    def documents(self, start=0):
        seen = 0
        try:
            for text in self.retry.stream(f"streaming {self.spec}", self._texts, start):
                seen += 1
                yield text
        except (SourceError, RetriesExhausted, HubUnreachable):
            raise
        except Exception as e:
            raise hub_error(self.spec, self.name, e) from None
        if seen == 0 and start == 0:
            raise SourceError(f"--source {self.spec}: no documents")

    def _texts(self, start):
        if self._resume_point is not None and self._resume_point[0] == start:
            _, records, state = self._resume_point
            records.load_state_dict(state)
        else:
            records = self.dataset.skip(start) if start else self.dataset
        for done, record in enumerate(records, start + 1):
            if self.text_field not in record:
                raise SourceError(f"--source {self.spec}: no field {self.text_field!r} "
                                  f"(fields: {', '.join(record)}); pass --text-field NAME")
            self._resume_point = (done, records, records.state_dict())
            yield record[self.text_field]
