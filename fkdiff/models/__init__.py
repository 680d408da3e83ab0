"""Networks (backbones) and the functions that turn them into denoisers and energies."""
from fkdiff.models.mlp import MLP
from fkdiff.models.unet import UNet, null_label
from fkdiff.models.backbones import get_backbone, make_denoiser
from fkdiff.models import energy
from fkdiff.models.energy import EnergyModel, Gauge, bind, init_from_teacher
from fkdiff.models.energy import PARAMETERIZATIONS, denoiser_from_energy, score_from_energy
from fkdiff.models import two_head
from fkdiff.models.two_head import HeadEnergy, TwoHeadModel
