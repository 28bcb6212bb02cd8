"""MT-Bench, the chat benchmark JetMoE-8B-Chat is reported by (6.681): two-turn answers from a saved chat model,
single-answer grading by a judge model behind any OpenAI-compatible endpoint, and the score table and chart.

`questions` reads the benchmark's files, `answers` writes FastChat's answer-file format, `judge` asks the judge
(resumable), `scores` turns judgments into the table and chart; `stub_judge` is a local stand-in for trying it.
`mt_bench` runs them. The model-card benchmarks through EleutherAI's lm-evaluation-harness: `harness` (runs),
`harness_lm` (our engine for lm-eval), `harness_presets` (the card's tasks), `harness_table` (the table).

May import: `align.config`, `align.data`, `align.runs`, `align.inference` (answering with and exporting a saved
model). `settings` (the `eval:` section's types, which the recipe reader reads) imports only `align.config` and
`published`. Not the stages or the command line."""
