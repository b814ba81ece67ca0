"""The base every layer stands on: typed params, user errors, atomic files, the stage runtime (device, seeds,
streams, cores, interruptions), MLflow tracking, the list of fits, small statistics."""
