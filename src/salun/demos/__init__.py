"""The demos, one per task (``salun demo --task NAME``): each runs the pipeline on an offline
default and writes tables, plots and sample grids. A task names its demo by import path
(``Task.demo``), so the tasks never import the demos."""
