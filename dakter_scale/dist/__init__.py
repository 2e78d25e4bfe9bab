"""Running a plain worker over many tasks, here or on Ray actors: the one driver loop (``driver.drive``),
its progress line (``driver.Progress``), the task and strategy protocols, the strategies
(``strategies.LocalStrategy``, ``strategies.RayStrategy``) and shipping a model folder to actors
(``folder``). Synthesis (synth/run.py: a shard per task) and scene inference (scene/many.py: a scene
per task) both run on it; it imports neither, nor anything above data/ (tests/test_layers.py)."""
