//! An agent's vote: its assessment as a ballot of the decision's method.

use canopy_schemas::{Ballot, Decision, Method, SchemaError};

use crate::analysers::OptionScore;

/// The ballot an agent casts for `scores` (one per option, in option order): single choice
/// its best option (the lowest index on a tie); approval every option it scores above the
/// status quo's zero, or its best when none is; ranked choice every option, best first;
/// quadratic as many votes on its best option as the credits buy.
pub fn ballot_for(decision: &Decision, scores: &[OptionScore]) -> Result<Ballot, SchemaError> {
    let mut order: Vec<&OptionScore> = scores.iter().collect();
    // Stable: equal scores keep option order.
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let best = order.first().map_or(0, |s| s.option);
    match decision.method {
        Method::SingleChoice => Ballot::single_choice(best),
        Method::Approval => {
            let approved: Vec<u16> = scores
                .iter()
                .filter(|s| s.score > 0.0)
                .map(|s| s.option)
                .collect();
            if approved.is_empty() {
                Ballot::approval(&[best])
            } else {
                Ballot::approval(&approved)
            }
        }
        Method::RankedChoice => {
            let ranking: Vec<u16> = order.iter().take(31).map(|s| s.option).collect();
            Ballot::ranked_choice(&ranking)
        }
        Method::Quadratic => {
            let votes = (f64::from(decision.credits).sqrt().floor() as u16).max(1);
            Ballot::quadratic(&[(best, votes)])
        }
    }
}
