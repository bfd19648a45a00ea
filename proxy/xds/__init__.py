"""xDS: dynamic configuration sources (files so far) and their application on the main thread.

`subscription` is the seam (a source delivers resources to callbacks that validate and apply
them); `file_source` is the filesystem source; `xds_manager` owns the subscriptions and polls
them on the main thread's tick; `cds`, `lds`, `rds`, `eds` validate and apply each type.
"""
