"""Byzantine attacks: model poisoning (replace Byzantine rows of `updates [n, d]`, possibly
adaptively through the server's rule) and data poisoning (transform a Byzantine client's
minibatch before its local gradient); the registry also builds the inadvertent faults of
`fedjax_robust.attacks.faults` and parses mixed populations (`parse_population`)."""

from fedjax_robust.attacks.base import Attack
from fedjax_robust.attacks.base import honest_mean_and_std
from fedjax_robust.attacks.base import replace_byzantine
from fedjax_robust.attacks.data_poisoning import backdoor
from fedjax_robust.attacks.data_poisoning import flip_labels
from fedjax_robust.attacks.data_poisoning import stamp_trigger
from fedjax_robust.attacks.model_poisoning import alie
from fedjax_robust.attacks.model_poisoning import alie_z
from fedjax_robust.attacks.model_poisoning import foe
from fedjax_robust.attacks.model_poisoning import gaussian
from fedjax_robust.attacks.model_poisoning import inf
from fedjax_robust.attacks.model_poisoning import ipm
from fedjax_robust.attacks.model_poisoning import large
from fedjax_robust.attacks.model_poisoning import line_search
from fedjax_robust.attacks.model_poisoning import mimic
from fedjax_robust.attacks.model_poisoning import mimic_variance
from fedjax_robust.attacks.model_poisoning import nan
from fedjax_robust.attacks.model_poisoning import optimal_alie
from fedjax_robust.attacks.model_poisoning import optimal_ipm
from fedjax_robust.attacks.model_poisoning import sign_flip
from fedjax_robust.attacks.registry import IMAGE_ONLY
from fedjax_robust.attacks.registry import TEXT_ONLY
from fedjax_robust.attacks.registry import data_poisoning_names
from fedjax_robust.attacks.registry import fault_names
from fedjax_robust.attacks.registry import get
from fedjax_robust.attacks.registry import model_poisoning_names
from fedjax_robust.attacks.registry import names
from fedjax_robust.attacks.registry import option_domains
from fedjax_robust.attacks.registry import options
from fedjax_robust.attacks.registry import parse_population
