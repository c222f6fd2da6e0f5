"""Model loading (policies and score models), content hashing, and the tiny world's builder."""
