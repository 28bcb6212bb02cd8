"""Our engine for lm-evaluation-harness: lm-eval's own `HFLM` (its tokenisation, request handling, truncation,
few-shot contexts, result bookkeeping), with the model work done our way on our `JetMoEForCausalLM`:

- loglikelihood (and loglikelihood_rolling, which lm-eval turns into loglikelihood windows): the requests of a
  batch are laid end to end in one packed row (position ids restarting at 0), so the padding-free forward computes
  no padding, and the vocabulary projection and softmax run only at the positions that are scored (a 5-shot prompt
  of ~600 tokens scores one);
- generate_until: our decoder (`jetmoe_model.decoding`: a preallocated cache, CUDA-graph steps on a GPU).

Registered with lm-eval as `jetmoe-align`, so `simple_evaluate(model="jetmoe-align", model_args="pretrained=DIR")`
works too. lm-eval's stock `hf` model is the `--engine transformers` comparison."""

from itertools import accumulate

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

from jetmoe_model import JetMoEForCausalLM, decoding

from ..runs.quiet import errors_only

# Tokens in one packed forward: ~50 five-shot MMLU prompts; at the JetMoE-8B shape its activations and the scored
# positions' logits take a few GiB.
MAX_BATCH_TOKENS = 32768


@register_model("jetmoe-align")
class JetMoEAlignLM(HFLM):
    def __init__(self, pretrained, tokenizer=None, dtype="auto", device=None,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, **kwargs):  # fmt: skip
        """`pretrained`: a checkpoint dir or hub id (loaded into our model, on the GPU where there is one) or our
        model already loaded. `batch_size` (lm-eval's) caps the requests of one packed forward ("auto": no cap),
        `max_batch_tokens` its tokens. A checkpoint is loaded on our Triton experts where there is a GPU (the
        PyTorch reference elsewhere), whatever backend it was trained with."""
        if isinstance(pretrained, str):
            tokenizer = tokenizer or pretrained
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            pretrained = JetMoEForCausalLM.from_pretrained(pretrained, dtype=dtype, device_map=device,
                                                           moe_backend="auto")
        if tokenizer is None:
            raise ValueError("jetmoe-align: a loaded model needs its tokenizer (tokenizer=...)")
        with errors_only("lm_eval.models.huggingface"):  # HFLM warns at length when handed a loaded model
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        self.max_batch_tokens = int(max_batch_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """HFLM's scoring (the same inputs, left-truncated to `max_length`; requests sharing their input computed
        once), in packed rows instead of right-padded batches."""
        collator = Collator(
            requests,
            sort_fn=lambda request: (-len(request[1] + request[2]), tuple(request[1] + request[2])),
            group_by="contexts" if self.logits_cache else None,
            group_fn=lambda request: request[1] + request[2][:-1],
        )
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="Running loglikelihood requests (packed)")  # fmt: skip
        results = []
        for chunk in self._packed_chunks(collator.get_batched(n=1), override_bs):
            for (request_str, context, continuation), logprobs in zip(chunk, self._continuation_logprobs(chunk)):
                greedy = logprobs.argmax(-1)
                for string, tokens, same in collator.get_cache(
                    req_str=request_str, cxt_toks=context, cont_toks=continuation, logits=logprobs[None]
                ):
                    tokens = torch.tensor(tokens, dtype=torch.long, device=logprobs.device)
                    answer = (float(same[0, -len(tokens):].gather(1, tokens[:, None]).sum()),
                              bool((greedy[-len(tokens):] == tokens).all()))  # fmt: skip
                    results.append(answer)
                    if string is not None:  # None: a window of loglikelihood_rolling, cached per document there
                        self.cache_hook.add_partial("loglikelihood", string, answer)
                    progress.update(1)
        progress.close()
        return collator.get_original(results)

    def _packed_chunks(self, singles, override_bs):
        """Consecutive requests (longest first) while they fit `max_batch_tokens` and the batch size."""
        limit = override_bs or (None if self.batch_size == "auto" else int(self.batch_size))
        chunk, tokens = [], 0
        for (request,) in singles:
            length = len(self._model_input(request))
            if chunk and (tokens + length > self.max_batch_tokens or len(chunk) == limit):
                yield chunk
                chunk, tokens = [], 0
            chunk.append(request)
            tokens += length
        if chunk:
            yield chunk

    def _model_input(self, request) -> list[int]:
        """What HFLM feeds the model for a request: context + continuation without its last token, cut on the left
        to the model's length."""
        _, context, continuation = request
        return (context + continuation)[-(self.max_length + 1):][:-1]

    @torch.no_grad()
    def _continuation_logprobs(self, chunk) -> list[torch.Tensor]:
        """Per request, `[continuation length, vocab]` float32 log-probabilities from one packed forward."""
        inputs = [self._model_input(request) for request in chunk]
        ends = list(accumulate(len(tokens) for tokens in inputs))
        lengths = [len(request[2]) for request in chunk]
        ids = torch.tensor([token for tokens in inputs for token in tokens], device=self.device)[None]
        positions = torch.cat([torch.arange(len(tokens)) for tokens in inputs]).to(self.device)[None]
        scored = torch.cat([torch.arange(end - length, end) for end, length in zip(ends, lengths)]).to(self.device)
        logits = self.model(input_ids=ids, position_ids=positions, logits_to_keep=scored, use_cache=False,
                            output_router_logits=False).logits[0]  # fmt: skip
        return list(F.log_softmax(logits.float(), dim=-1).split(lengths))

    def _model_generate(self, context, max_length: int, stop, attention_mask=None, **generation_kwargs):
        """HFLM's generation call, on our decoder: it stops a row at the end-of-text token; lm-eval then cuts each
        answer at the task's stop sequences, as it does after transformers' `generate`."""
        options = dict(generation_kwargs)
        temperature = float(options.pop("temperature", 0.0) or 0.0)
        if not options.pop("do_sample", temperature > 0):
            temperature = 0.0
        top_p = float(options.pop("top_p", 1.0) or 1.0)
        if options:
            raise ValueError(f"engine jetmoe: generation options {sorted(options)} are not supported by our decoder "
                             f"(--engine transformers supports them)")
        eos = {self.tokenizer.eos_token_id, *_as_list(self.model.generation_config.eos_token_id)} - {None}
        return decoding.generate(self.model, context, attention_mask, max_length - context.shape[1],
                                 temperature=temperature, top_p=top_p, eos_token_id=sorted(eos),
                                 pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
