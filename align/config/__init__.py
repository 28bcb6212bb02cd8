"""Configuration: what a recipe can say, read into typed dataclasses, and nothing that acts on it.

    recipes     the recipe reader: YAML sections into dataclasses, `--key value` overrides, `RecipeError`
    guard_args  the `guard:` section (what a stage does when training goes wrong)
    engines     the engines a saved model can answer with (a constant the settings types check against)

May import: `align.data` (its spec types) and the settings types that live beside the code they configure
(`align.lora.arguments`, `align.evaluation.settings`), which import nothing of ours but `config` and `data`.
Nothing above: every other package reads recipes, so configuration that imported them would close a circle.
"""
