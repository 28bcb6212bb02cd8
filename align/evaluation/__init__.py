"""MT-Bench, the chat benchmark JetMoE-8B-Chat is reported by (6.681): two-turn answers from a saved chat model,
single-answer grading by a judge model behind any OpenAI-compatible endpoint, and the score table and chart.

`questions` reads the benchmark's files, `answers` writes FastChat's answer-file format, `judge` asks the judge
(resumable), `scores` turns judgments into the table and chart; `stub_judge` is a local stand-in for trying it."""
