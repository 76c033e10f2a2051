"""The engine's view of `Data.{Train,Eval,Test}`: datasets and loaders built through ppmerge.data."""
import functools

from ppmerge.errors import ConfigError


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab_file, merges_file):
    from ppmerge.data import load_tokenizer

    return load_tokenizer(vocab_file, merges_file)


def _value(section, key, default):
    """section[key], `default` only when absent or null (0 is a value: the schema range-checks it)."""
    value = section.get(key)
    return default if value is None else value


def build_dataset(cfg, mode, split=None):
    """The model family's dataset for `Data.<mode>.dataset` (split overridable, e.g. eval.py --split
    test): GLUEDataset for GPT, T5GLUEDataset (prompted text-to-text) for T5."""
    from ppmerge.models.families import family_of_config

    section = (cfg.get("Data") or {}).get(mode)
    if not section or not section.get("dataset"):
        raise ConfigError(f"Data.{mode}.dataset: missing (expected name, root, split, max_length)")
    ds = section["dataset"]
    from ppmerge.data.tasks import dataset_task

    return family_of_config(cfg).dataset(dataset_task(ds, f"Data.{mode}.dataset"), ds["root"], split or ds.get("split") or "train",
                                         max_length=int(_value(ds, "max_length", 128)))


def check_batch_sizes(cfg, accumulate_steps, world_size):
    """FleetX's Global batch keys, when set, must describe the batch the loop really uses:
    micro_batch_size = Data.Train.sampler.batch_size (one forward/backward), local_batch_size =
    micro x Engine.accumulate_steps (one optimizer step on one rank), global_batch_size = local x ranks.
    A disagreement is an error, never silently ignored."""
    glob = cfg["Global"]
    micro = int(_value((cfg["Data"].get("Train") or {}).get("sampler") or {}, "batch_size", 32))
    expected = {"micro_batch_size": (micro, "Data.Train.sampler.batch_size"),
                "local_batch_size": (micro * accumulate_steps,
                                     "Data.Train.sampler.batch_size x Engine.accumulate_steps"),
                "global_batch_size": (micro * accumulate_steps * world_size,
                                      f"local batch x {world_size} data-parallel rank(s)")}
    for key, (value, rule) in expected.items():
        if glob.get(key) is not None and int(glob[key]) != value:
            raise ConfigError(f"Global.{key}={glob[key]} disagrees with the batch the loop uses: {rule} = {value} "
                              f"(set Global.{key}={value} or null, or change the batch keys to match)")


def build_loader(cfg, mode, dataset, num_replicas=1, rank=0, train=True, collate_fn=None):
    """DataLoader over `dataset` with `Data.<mode>.sampler` / `.loader`; eval never shuffles or drops."""
    from ppmerge.data import build_dataloader

    section = (cfg.get("Data") or {}).get(mode) or {}
    sampler = section.get("sampler") or {}
    loader = section.get("loader") or {}
    batch_size = int(_value(sampler, "batch_size", 32))
    return build_dataloader(dataset, batch_size,
                            shuffle=bool(sampler.get("shuffle", True)) and train,
                            drop_last=bool(sampler.get("drop_last", False)) and train,
                            seed=int(cfg["Global"]["seed"]), num_workers=int(loader.get("num_workers") or 0),
                            num_replicas=num_replicas, rank=rank, collate_fn=collate_fn)
