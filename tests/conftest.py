import os
import sys

# Tests import shared helpers from each other (e.g. train_test.tiny_config).
sys.path.insert(0, os.path.dirname(__file__))
