"""Stage 3, consistency distillation: the teacher's ODE jumps (``solvers``), the consistency
objective (``consistency``), few-step sampling (``sampling``), the distillation stage and its
skip-k ablation students, and the MLflow registry of the distilled models."""
