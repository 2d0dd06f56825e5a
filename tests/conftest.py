import os

import torch

# Two CI cores: keep intra-op threads bounded so multi-process tests don't oversubscribe.
torch.set_num_threads(min(2, os.cpu_count() or 1))
