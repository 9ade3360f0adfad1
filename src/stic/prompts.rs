//! The prompts of the official STIC code, verbatim (repository yihedeng9/STIC, commit
//! 993734ee3009311630e64d9d4b36355966deb97a; see docs/STIC.md for file and line of each).
//! `tests/fixtures/stic/official_prompts.json` holds a transcription of the same literals, and the
//! tests below compare them.

/// The plain description prompts (`prompt_list`, stic/generate_pref.py:164-171): one is drawn per
/// image; it is the training prompt of the pair, and the prompt of a corrupted-image rejection.
/// Stage 2 draws its description prompt from the same list (stic/generate_des_stage2.py:163-170).
pub const DESCRIPTION_PROMPTS: [&str; 8] = [
    "Illustrate the details of the picture.",
    "Summarize the visual content presented.",
    "Explain what is depicted in the photograph.",
    "Outline the key elements captured in the image.",
    "Detail the composition and subjects within the frame.",
    "Convey the atmosphere and mood represented in the snapshot.",
    "Interpret the scene shown in the image.",
    "Identify and describe the main focal points in the visual.",
];

/// The step-by-step prompt that produces the preferred answer (`full_prompt`,
/// stic/generate_pref.py:173-179). A Python triple-quoted string: the continuation lines keep the
/// source's four-space indentation, and three lines end in a space.
pub const GOOD_PROMPT: &str = "Please provide a detailed description of the image, focusing on the following. \n    \
Identify the main subjects (people, animals, objects) in the image and describe what they are doing.\n    \
Describe the setting of the image. Is it indoors or outdoors? What kind of environment or location does it depict? \n    \
What mood does the image convey? Are there any specific elements (such as lighting, weather, expressions) that contribute to this atmosphere? \n    \
Describe the dominant colors and the overall composition. How do these elements affect the image's impact?\n    \
Point out any details or symbols that might be relevant to understanding the image's meaning or context.\n    \
If applicable, provide interpretations of what the image might represent or communicate.";

/// The hallucination-inducing prompts (`hallu_prompt_list`, stic/generate_pref.py:181-188): their
/// answers on the original image are one kind of rejected response.
pub const HALLUCINATION_PROMPTS: [&str; 8] = [
    "Describe the image with imaginative objects that may exist in the scene.",
    "Enrich the description by adding hypothetical objects or characters that could be part of the scene.",
    "Suggest and detail practical items or people that could logically inhabit the image's setting.",
    "Incorporate elements that, though absent, would seamlessly fit into the context of the picture.",
    "Imagine and describe additional everyday objects or activities taking place just out of frame.",
    "Augment the scene with details of potential events or items that are plausible.",
    "Conceive of and detail natural elements, such as weather or animals, that could realistically enter the scene. Make the description affirmative.",
    "Invent and incorporate details of practical tools, vehicles, or gadgets that could be expected in a similar scenario.",
];

/// Stage 2's description prompts: the same list as stage 1's (stic/generate_des_stage2.py:163-170).
pub const STAGE2_DESCRIPTION_PROMPTS: [&str; 8] = DESCRIPTION_PROMPTS;

/// Put a stage-2 description into the first human turn, as stic/add_des_to_data.py:24-27 does:
/// when the turn contains `"<image>\n"`, every occurrence becomes
/// `"<image>\nImage description:\n" + description + "\n\n"`; otherwise
/// `"Image description:\n" + description + "\n\n"` goes before the turn.
pub fn infuse_description(human_turn: &str, description: &str) -> String {
    if human_turn.contains("<image>\n") {
        human_turn.replace("<image>\n", &format!("<image>\nImage description:\n{description}\n\n"))
    } else {
        format!("Image description:\n{description}\n\n{human_turn}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn official() -> serde_json::Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stic/official_prompts.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    fn list(v: &serde_json::Value) -> Vec<&str> {
        v["value"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
    }

    #[test]
    fn prompts_match_the_official_text() {
        let o = official();
        assert_eq!(list(&o["description_prompts"]), DESCRIPTION_PROMPTS);
        assert_eq!(list(&o["hallucination_prompts"]), HALLUCINATION_PROMPTS);
        assert_eq!(list(&o["stage2_description_prompts"]), STAGE2_DESCRIPTION_PROMPTS);
        assert_eq!(o["good_prompt"]["value"].as_str().unwrap(), GOOD_PROMPT);
    }

    #[test]
    fn wrapper_matches_the_official_format() {
        let o = official();
        let w = &o["stage2_wrapper"];
        let find = w["with_image_token"]["find"].as_str().unwrap();
        let repl = w["with_image_token"]["replace"].as_str().unwrap().replace("{description}", "A cat.");
        let turn = "<image>\nWhat is on the mat?";
        assert_eq!(infuse_description(turn, "A cat."), turn.replace(find, &repl));
        assert_eq!(infuse_description(turn, "A cat."), "<image>\nImage description:\nA cat.\n\nWhat is on the mat?");
        let plain = "What is on the mat?\n<image>";
        let want = w["without_image_token"].as_str().unwrap().replace("{description}", "A cat.").replace("{value}", plain);
        assert_eq!(infuse_description(plain, "A cat."), want);
    }
}
