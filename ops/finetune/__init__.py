"""Fine-tuning on a user's own classes (``llcm finetune``) and the paper's unseen dog cardiac
X-ray experiment: a custom dataset's workspace, replay of the base classes, the teacher and
the consistency student continued on it, and what is measured of the result."""
