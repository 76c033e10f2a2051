"""GPT for sequence classification: paddlenlp's `GPTModel` backbone + a bias-free `score` head.

The pooled token is the last real one, taken from the true lengths. paddlenlp's own class pools the
last token that is not eos, which breaks for a text containing <|endoftext|> (or `!`, id 0, with
FleetX's rule). With right padding and causal attention, the padding after the last real token cannot
change its hidden state, so a padded batch gives the same logits as each text alone."""
from ppmerge.runtime import import_paddle, import_paddlenlp_transformers

paddle = import_paddle()
transformers = import_paddlenlp_transformers()
nn = paddle.nn


class GPTForSequenceClassification(nn.Layer):
    def __init__(self, gpt_config, num_classes=2):
        super().__init__()
        self.num_classes = num_classes
        self.gpt = transformers.GPTModel(gpt_config)
        init = nn.initializer.Normal(mean=0.0, std=gpt_config.initializer_range)
        self.score = nn.Linear(gpt_config.hidden_size, num_classes, weight_attr=paddle.ParamAttr(initializer=init),
                               bias_attr=False)

    @property
    def config(self):
        return self.gpt.config

    def pooled_hidden(self, input_ids, lengths):
        """Final-layer hidden state of each row's last real token: [B, H]."""
        # paddlenlp builds position ids 0..L-1 per row, right for right padding.
        hidden = self.gpt(input_ids=input_ids)
        if not isinstance(lengths, paddle.Tensor):
            lengths = paddle.to_tensor(lengths)
        last = lengths.astype("int64") - 1
        rows = paddle.arange(hidden.shape[0], dtype="int64")
        return paddle.gather_nd(hidden, paddle.stack([rows, last], axis=-1))

    def forward(self, input_ids, lengths):
        """Logits [B, num_classes] for right-padded `input_ids` [B, L] with true `lengths` [B]."""
        return self.score(self.pooled_hidden(input_ids, lengths))


def build_model(model_cfg, num_classes):
    """A freshly initialised model for a `Model` config section (or a preset name)."""
    from ppmerge.models.presets import make_gpt_config

    return GPTForSequenceClassification(make_gpt_config(model_cfg), num_classes)
