"""The model family seam: picked from Model.name; the GPT family is today's GPT path; T5 has no head."""
import numpy as np
import pytest

from ppmerge.errors import ConfigError


def test_get_family_by_preset():
    from ppmerge.models.families import family_name, get_family

    gpt, t5 = get_family({"name": "gpt-tiny"}), get_family({"name": "t5-tiny"})
    assert (gpt.name, gpt.head_keys, gpt.generates) == ("gpt", r"^score\.", False)
    assert (t5.name, t5.head_keys, t5.generates) == ("t5", None, True)
    assert family_name("GPT") == "gpt" and family_name("flan-t5-base") == "t5"
    with pytest.raises(ConfigError, match="unknown architecture"):
        get_family({"name": "bert-base"})


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("task", ["SST2", "STSB"])
def test_gpt_family_loss_and_metrics_match_numpy(task, glue_suite):
    from ppmerge.data import get_task, task_root
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    spec = get_task(task)
    fam = get_family({"name": "gpt-tiny", "num_classes": spec.num_classes})
    fam.check(spec)
    paddle.seed(0)
    net = fam.build(spec)
    net.eval()
    ds = fam.dataset(spec, task_root(task, glue_suite["glue"], "glue"), "dev", max_length=32)
    batch = {k: paddle.to_tensor(v) for k, v in fam.collate([ds[i] for i in range(6)]).items()}
    with paddle.no_grad():
        logits = fam.predict(net, batch, spec).numpy().astype(np.float64)
        loss = float(fam.loss(net, batch, spec))
    labels = batch["labels"].numpy()
    if spec.is_regression:
        expected = float(np.mean((logits[:, 0] - labels) ** 2))
    else:
        expected = float(-_log_softmax(logits)[np.arange(6), labels].mean())
    assert loss == pytest.approx(expected, rel=1e-5)
    results = fam.evaluate(logits.astype(np.float32), labels, spec)
    assert results["loss"] == pytest.approx(expected, rel=1e-5)
    if not spec.is_regression:
        assert results["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_gpt_family_checks_head_size():
    from ppmerge.data import get_task
    from ppmerge.models.families import get_family

    with pytest.raises(ConfigError, match="num_classes"):
        get_family({"name": "gpt-tiny", "num_classes": 2}).check(get_task("MNLI"))
    get_family({"name": "t5-tiny", "num_classes": 2}).check(get_task("MNLI"))   # T5: no head to size
