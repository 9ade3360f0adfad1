//! Inference commands: `stic generate`, `score`, `profile` (on `--device`) and `demo`.

use serde::Serialize;

use stic::backend::Backend;
use stic::generate::{Pipeline, Request, SamplingParams, WithPipeline};
use stic::image::{load_image, RgbImage};
use stic::Result;

use super::args::{sampling, DemoArgs, GenerateArgs, ProfileArgs, ScoreArgs};

/// `stic generate`: one `--image` for all prompts or one per prompt; one line (text or JSON) per
/// prompt.
pub fn generate(a: &GenerateArgs) -> Result<()> {
    let params = sampling(a.max_new_tokens, a.temperature, a.top_p, a.top_k, a.seed)?;
    let images = a.common.images()?;
    if images.len() > 1 && images.len() != a.prompt.len() {
        return Err(stic::Error::Input(format!(
            "{} images for {} prompts: give one image for all prompts or one per prompt",
            images.len(),
            a.prompt.len()
        )));
    }
    a.common.with_pipeline(Generate { a, images, params })
}

struct Generate<'a> {
    a: &'a GenerateArgs,
    images: Vec<RgbImage>,
    params: SamplingParams,
}

impl WithPipeline for Generate<'_> {
    type Out = ();
    fn run<B: Backend>(self, pipe: Pipeline<B>) -> Result<()> {
        let Generate { a, images, params } = self;
        let reqs: Vec<Request> = a
            .prompt
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let imgs = match images.len() {
                    0 => vec![],
                    1 => vec![images[0].clone()],
                    _ => vec![images[i].clone()],
                };
                Request { prompt: pipe.format_prompt(p, imgs.len(), a.common.raw_prompt), images: imgs }
            })
            .collect();
        for g in pipe.generate(&reqs, &params)? {
            if a.common.json {
                print_json(&g);
            } else {
                println!("{}", g.text);
            }
        }
        Ok(())
    }
}

/// `stic score`: the response's per-token log-probabilities and their sum.
pub fn score(a: &ScoreArgs) -> Result<()> {
    let images = a.common.images()?;
    a.common.with_pipeline(Score { a, images })
}

struct Score<'a> {
    a: &'a ScoreArgs,
    images: Vec<RgbImage>,
}

impl WithPipeline for Score<'_> {
    type Out = ();
    fn run<B: Backend>(self, pipe: Pipeline<B>) -> Result<()> {
        let Score { a, images } = self;
        let prompt = pipe.format_prompt(&a.prompt, images.len(), a.common.raw_prompt);
        let s = pipe.score(&prompt, &images, &a.response)?;
        if a.common.json {
            print_json(&s);
        } else {
            for (id, lp) in s.response_ids.iter().zip(&s.logprobs) {
                println!("{id}\t{lp:.6}");
            }
            println!("sum\t{:.6}", s.sum);
        }
        Ok(())
    }
}

/// `stic profile`: one prefill and `--decode-steps` decode steps with per-op tables.
pub fn profile(a: &ProfileArgs) -> Result<()> {
    a.common.with_pipeline(Profile(a))
}

struct Profile<'a>(&'a ProfileArgs);

impl WithPipeline for Profile<'_> {
    type Out = ();
    fn run<B: Backend>(self, pipe: Pipeline<B>) -> Result<()> {
        use stic::perf::{prepare, run, Workload};
        let a = self.0;
        let pipe = &pipe;
        let image = a.common.image.first().map(|p| load_image(p)).transpose()?;
        let w = Workload { batch: a.batch, prompt_len: a.prompt_len, decode_steps: a.decode_steps, image, seed: a.seed };
        let be = pipe.model.backend();
        let prep = prepare(pipe, &w)?;
        for _ in 0..a.warmup {
            run(pipe, &prep, a.decode_steps.min(4), false)?;
        }
        let (prefill, decode) = run(pipe, &prep, a.decode_steps, true)?;
        if a.common.json {
            print_json(&serde_json::json!({
                "device": be.describe(), "batch": a.batch, "prompt_rows": prep.rows_per_prompt(), "image_rows": prep.image_rows(),
                "decode_steps": a.decode_steps, "prefill": prefill, "decode": decode,
            }));
            return Ok(());
        }
        println!("device: {}", be.describe());
        println!(
            "prefill: {} prompt(s) x {} rows ({} image + {} text): {:.2} ms, {:.0} tokens/s",
            a.batch,
            prep.rows_per_prompt(),
            prep.image_rows(),
            prep.rows_per_prompt() - prep.image_rows(),
            prefill.ms,
            prefill.tokens_per_second()
        );
        print!("{}", stic::backend::profile::table(&prefill.ops));
        if a.decode_steps > 0 {
            println!(
                "decode: {} steps x batch {}: {:.3} ms/step, {:.1} tokens/s",
                a.decode_steps,
                a.batch,
                decode.ms / a.decode_steps as f64,
                decode.tokens_per_second()
            );
            print!("{}", stic::backend::profile::table(&decode.ops));
        }
        println!("(per-op times: CUDA events around each op on the GPU, wall time on the CPU; they add a little to the phase times)");
        Ok(())
    }
}

/// `stic demo`: 16 greedy tokens on the bundled tiny checkpoint (CPU).
pub fn demo(a: &DemoArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let pipe = Pipeline::load(&a.model)?;
    let img = load_image(&a.image)?;
    let req = Request { prompt: pipe.format_prompt(&a.prompt, 1, false), images: vec![img] };
    let g = pipe.generate(&[req], &SamplingParams { max_new_tokens: 16, ..Default::default() })?;
    println!("model:  {}", a.model.display());
    println!("image:  {} ({} image tokens)", a.image.display(), g[0].n_image_tokens);
    println!("prompt: {}", a.prompt);
    println!("output: {:?}", g[0].text);
    println!("ids:    {:?}", g[0].output_ids);
    println!("(random tiny weights: the text is gibberish by design; {:.2} s)", t0.elapsed().as_secs_f64());
    Ok(())
}

/// One compact JSON line on stdout.
fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).expect("serialisable"));
}
