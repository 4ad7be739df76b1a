"""Pure machine learning of the service: data, forecasting, segmentation, backtests, registry.

Nothing here reads the environment, configures logging or talks to Redis, Celery or Flask;
callers pass everything in. Import the submodules directly (``from ml.forecast import
Forecaster``): this package deliberately imports nothing so that ``import ml`` stays cheap.
"""
