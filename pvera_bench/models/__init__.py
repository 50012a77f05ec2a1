"""The model of a run: timm backbones (hub or local weights), the adapted model with a fresh head, where it runs
(device, seeding, batches), and the split q/k/v view PEFT needs."""
