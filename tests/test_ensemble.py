"""simple_ensemble: the backbones' pooled hidden states averaged before each task's head."""
import numpy as np
import pytest

from test_task_pool_support import make_pool, random_backbone, random_heads, reference_logits, sklearn_metrics

TASKS = ["SST2", "STSB", "MNLI"]


@pytest.fixture(scope="module")
def pool(glue_suite):
    return make_pool(glue_suite["glue"], TASKS, max_examples=16, batch_size=6)


@pytest.fixture(scope="module")
def heads():
    return random_heads(TASKS, 10)


def test_ensemble_of_one_backbone_is_that_backbone(pool, heads):
    backbone = random_backbone(21)
    alone = pool.evaluate(backbone, heads)
    ensemble = pool.evaluate_ensemble([backbone], heads)
    for task in TASKS:
        for key, value in alone[task].items():
            if key != "seconds":
                assert ensemble[task][key] == pytest.approx(value, abs=1e-6), (task, key)


def test_ensemble_averages_pooled_hidden_states_before_the_head(pool, heads):
    """Three backbones through the registered method, against a direct computation: mean of each
    model's pooled hidden state (padded-to-max forward) times the head, scored with sklearn/scipy."""
    from ppmerge.merge import METHODS, MergeContext

    backbones = [random_backbone(s) for s in (22, 23, 24)]
    context = MergeContext(task_names=TASKS, heads=[heads[t] for t in TASKS], task_pool=pool,
                           model_cfg={"name": "gpt-tiny"})
    result = METHODS["simple_ensemble"](None, backbones, context=context)
    assert getattr(result, "is_ensemble", False) and len(result) == 3
    metrics = result.evaluate(pool, heads)
    for task in TASKS:
        hidden = np.mean([reference_logits(pool, task, b, heads[task], pooled=True)[0] for b in backbones], axis=0)
        labels = reference_logits(pool, task, backbones[0], heads[task])[1]
        expected = sklearn_metrics(task, hidden @ heads[task]["score.weight"], labels)
        for key, value in expected.items():
            assert metrics[task][key] == pytest.approx(value, abs=1e-6), (task, key)
        assert metrics[task]["num_examples"] == 16
    # Not the same as any single member (the average really happens).
    single = pool.evaluate(backbones[0], heads, ["STSB"])["STSB"]["pearson"]
    assert metrics["STSB"]["pearson"] != pytest.approx(single, abs=1e-6)
