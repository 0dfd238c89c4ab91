"""The evaluation: one evaluation of a model's predictions, per label.

  curves        the curve primitive (sort + cumulative counts) and what is
                read off it: ROC, precision-recall, AUC, average precision,
                the operating points (Youden's J, sensitivity and
                specificity targets, the reference's fixed 0.5)
  calibration   Brier score, ECE, temperature scaling
  bootstrap     the patient-level bootstrap shared by every label
  per_label     each label's evaluation on its known targets: thresholds,
                calibration, every split and subgroup, the macro mean
  matching      which dataset label each model output is scored against
  localization  the pointing game of Grad-CAM heatmaps on boxes
  run           the run evaluator: predicts each split once, takes targets,
                patients and subgroups from the same records, writes
                results.json (format 2), results.md and the pictures
  markdown      results.md and tools/evaluate's summary
  plots         the pictures, one renderer per kind

NumPy at import: results can be recomputed from saved predictions without
TensorFlow (the run evaluator imports it when it reads a dataset). The
common names are re-exported here: `evaluation.roc_auc(labels, probs)`.
"""

from xray_tfdata.evaluation.bootstrap import CURVE_METRICS
from xray_tfdata.evaluation.bootstrap import bootstrap_intervals
from xray_tfdata.evaluation.bootstrap import macro_auc_interval
from xray_tfdata.evaluation.bootstrap import patient_resamples
from xray_tfdata.evaluation.bootstrap import patient_weights
from xray_tfdata.evaluation.bootstrap import shared_bootstrap
from xray_tfdata.evaluation.calibration import CALIBRATION_BINS
from xray_tfdata.evaluation.calibration import apply_temperature
from xray_tfdata.evaluation.calibration import brier_score
from xray_tfdata.evaluation.calibration import calibration_bins
from xray_tfdata.evaluation.calibration import calibration_report
from xray_tfdata.evaluation.calibration import expected_calibration_error
from xray_tfdata.evaluation.calibration import fit_temperature
from xray_tfdata.evaluation.calibration import logit
from xray_tfdata.evaluation.curves import FIXED
from xray_tfdata.evaluation.curves import OPERATING_POINTS
from xray_tfdata.evaluation.curves import POINT_METRICS
from xray_tfdata.evaluation.curves import average_precision
from xray_tfdata.evaluation.curves import binary_clf_curve
from xray_tfdata.evaluation.curves import choose_threshold
from xray_tfdata.evaluation.curves import confusion_counts
from xray_tfdata.evaluation.curves import operating_point_metrics
from xray_tfdata.evaluation.curves import precision_recall_curve
from xray_tfdata.evaluation.curves import roc_auc
from xray_tfdata.evaluation.curves import roc_curve
from xray_tfdata.evaluation.curves import youden_threshold
from xray_tfdata.evaluation.localization import hit_rate_interval
from xray_tfdata.evaluation.localization import pointing_game
from xray_tfdata.evaluation.matching import match_labels
from xray_tfdata.evaluation.matching import vocabulary_key
from xray_tfdata.evaluation.per_label import MASKED_TARGET
from xray_tfdata.evaluation.per_label import evaluate_label
from xray_tfdata.evaluation.per_label import evaluate_labels
from xray_tfdata.evaluation.per_label import known_targets
from xray_tfdata.evaluation.per_label import split_evaluation
from xray_tfdata.evaluation.run import evaluate_model
from xray_tfdata.evaluation.run import evaluate_run
