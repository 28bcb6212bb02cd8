"""What our SFT and DPO trainers add to TRL's, in one place: a stop (or a skipped step) on a non-finite loss and a
checkpoint on SIGTERM, checkpoints that survive a kill and record the run's settings, accepted recipe changes
applied on resume, no extra step after a finished resume, no tied-weight noise on resume, JetMoE's router
losses, token-balanced micro-batches, steps queued without waiting for the GPU, gradient clipping inside the fused
optimizer step, that step's update in our kernel, the FLOP count's parameters counted once, metrics made numbers
only when logged, `model.train()` and `model.zero_grad()` without a walk of every module a step."""

from ..runs.crash_safe import CrashSafeCheckpointsMixin
from .adamw import TritonAdamWMixin
from .clipping import ClipInFusedAdamMixin
from .deferred_metrics import DeferredMetricsMixin
from .flop_count import CountParametersOnceMixin
from .module_walks import QuickModuleWalksMixin
from .planned_batches import PlannedBatchesMixin
from .resume_trainer import ResumeSettingsMixin
from .router_loss import RouterLossMixin
from .stage import StopAtMaxStepsMixin
from .step_guard import StepGuardMixin
from .tied_weights import TiedWeightsResumeMixin
from .token_batches import TokenBalancedBatchesMixin


class JetMoETrainerMixin(StepGuardMixin, ResumeSettingsMixin, CrashSafeCheckpointsMixin, StopAtMaxStepsMixin,
                         TiedWeightsResumeMixin, PlannedBatchesMixin, RouterLossMixin, TokenBalancedBatchesMixin,
                         ClipInFusedAdamMixin, TritonAdamWMixin, CountParametersOnceMixin, DeferredMetricsMixin,
                         QuickModuleWalksMixin):
    """Mix in before a TRL trainer: `class JetMoESFTTrainer(JetMoETrainerMixin, SFTTrainer)`."""
