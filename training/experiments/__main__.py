"""`python -m training.experiments <study>`: run one study, or `all`."""

from training.experiments.runner import main

raise SystemExit(main())
