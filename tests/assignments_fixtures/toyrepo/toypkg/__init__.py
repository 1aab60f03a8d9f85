"""A toy package whose solution regions the assignments tests release and grade."""
