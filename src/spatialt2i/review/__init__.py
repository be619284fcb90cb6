"""Human review of pair datasets: a small web app (FastAPI + a static page), verdicts in SQLite
beside the dataset, agreement statistics, and export of a new dataset version with ``verified``.

Modules: ``dataset`` (pair index, rows, images, highlight spans), ``assign`` (deterministic
assignment of pairs to reviewers), ``agreement`` (percent agreement, Cohen's kappa), ``store``
(SQLite, WAL), ``service`` (the operations the app and CLI share), ``app`` (HTTP), ``export``,
``cli``. FastAPI/uvicorn are imported only by ``app`` and the ``serve`` command.
"""
