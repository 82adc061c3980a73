"""Brian2 simulation of exported BioFlexNet models (never imports torch)."""
