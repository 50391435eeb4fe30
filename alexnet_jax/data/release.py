"""The file layout of the ILSVRC-2010 release (README "Data: ILSVRC-2010").

Shared by the builder (ilsvrc2010.py) and the generator of the mini release
(mini.py); this module imports nothing, so generating data needs no
TensorFlow.
"""

TRAIN_TAR = "ILSVRC2010_images_train.tar"
VAL_TAR = "ILSVRC2010_images_val.tar"
TEST_TAR = "ILSVRC2010_images_test.tar"
DEVKIT_TAR = "ILSVRC2010_devkit-1.0.tar.gz"
TEST_GROUND_TRUTH = "ILSVRC2010_test_ground_truth.txt"
PATCH_TAR = "patch_images.tar"
REQUIRED_FILES = (TRAIN_TAR, VAL_TAR, TEST_TAR, DEVKIT_TAR, TEST_GROUND_TRUTH,
                  PATCH_TAR)
META_MEMBER = "devkit-1.0/data/meta.mat"
VAL_GROUND_TRUTH_MEMBER = (
    "devkit-1.0/data/ILSVRC2010_validation_ground_truth.txt")
