# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Label app's own code: infer tasks (``lib.infers``) and one task config per method (``lib.configs``)."""
