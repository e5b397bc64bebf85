"""Site models with nnU-Net v2: training (`llnassist train --framework nnunet`) and running a trained
nnU-Net model folder like the bundled model (`--model PATH`)."""
