//! The steps an operator takes on the Canopus portal, one method each: log in, search a CPF,
//! open a quota, list its boletos, emit one and download it. Control names and paths come from
//! `[canopus]`.

use std::time::Duration;

use chrono::NaiveDate;

use super::webforms::{Browser, Click, Exchange, Page, PortalError, Retry};
use crate::config::CanopusConfig;
use crate::domain::cpf::Cpf;
use crate::domain::money;

/// A quota offered by the search result grid.
#[derive(Debug, Clone)]
pub struct QuotaLink {
    pub target: String,
    /// As the portal shows it, e.g. `001234/0567`.
    pub label: String,
}

/// One open installment of the boleto grid.
#[derive(Debug, Clone)]
pub struct BoletoRow {
    pub image: String,
    pub due: NaiveDate,
    pub value_centavos: Option<i64>,
    /// The linha digitável as shown, when the grid has one.
    pub linha: Option<String>,
}

/// One portal session.
pub struct Portal {
    browser: Browser,
    cfg: CanopusConfig,
    /// A search page with the CPF criterion chosen, kept to search again without reloading.
    search_page: Option<Page>,
    /// The step under way, named in diagnostics.
    step: &'static str,
}

impl Portal {
    pub fn new(cfg: &CanopusConfig, base_url: &str) -> anyhow::Result<Portal> {
        Ok(Portal {
            browser: Browser::new(
                base_url,
                &cfg.login_path,
                Duration::from_secs(cfg.timeout_secs),
                Retry {
                    retries: cfg.retries,
                    backoff: Duration::from_millis(cfg.backoff_ms),
                },
                vec![cfg.password_field.clone()],
            )?,
            cfg: cfg.clone(),
            search_page: None,
            step: "start",
        })
    }

    /// Requests sent by this session.
    pub fn requests(&self) -> u64 {
        self.browser.requests()
    }

    /// The step under way (or where the last one stopped) and the last request with its
    /// answer: what a diagnostic file holds.
    pub fn snapshot(&self) -> Option<(&'static str, Exchange)> {
        self.browser.last_exchange().map(|e| (self.step, e))
    }

    /// Forgets the search page, so that the next search starts from a fresh one.
    pub fn reset(&mut self) {
        self.search_page = None;
    }

    /// Logs in with the user code (padded with zeros) and password. Only the login page's
    /// error message means the credentials were refused.
    pub async fn login(&mut self, user_code: &str, password: &str) -> Result<(), PortalError> {
        self.step = "login";
        self.search_page = None;
        let page = self
            .browser
            .get(self.browser.url(&self.cfg.login_path)?, true)
            .await?;
        let digits: String = user_code.chars().filter(char::is_ascii_digit).collect();
        let user = format!("{digits:0>width$}", width = self.cfg.user_code_digits);
        let after = self
            .browser
            .click(
                &page,
                Click::Button(&self.cfg.login_button),
                &[
                    (&self.cfg.user_field, user),
                    (&self.cfg.password_field, password.to_string()),
                ],
                true,
            )
            .await
            .map_err(|e| e.for_key("login_button"))?;
        if after
            .url
            .path()
            .to_ascii_lowercase()
            .ends_with(&self.cfg.login_path.to_ascii_lowercase())
        {
            return Err(match after.text_by_id(&self.cfg.login_message_id) {
                Some(message) => PortalError::LoginFailed(message.to_string()),
                None => PortalError::Unexpected(format!(
                    "the login page came back without an error message in `{}`: the portal changed; check `[canopus] user_field`, `password_field` and `login_message_id`",
                    self.cfg.login_message_id
                )),
            });
        }
        Ok(())
    }

    /// Searches a CPF; no quota link means the CPF is not a client. Links of the grid whose
    /// text holds no digit (an empty link, a header's sort link) are not quotas and are never
    /// posted: the portal answers them with "Selecione um registro válido." and stays on the
    /// client it was on.
    pub async fn search(&mut self, cpf: &Cpf) -> Result<Vec<QuotaLink>, PortalError> {
        self.step = "search";
        let page = match self.search_page.take() {
            Some(p) => p,
            None => {
                let p = self
                    .browser
                    .get(self.browser.url(&self.cfg.search_path)?, false)
                    .await?;
                // Choosing the criterion is an auto-postback: the search box opens after it.
                self.browser
                    .click(
                        &p,
                        Click::Postback(&self.cfg.criterion_field),
                        &[(&self.cfg.criterion_field, self.cfg.criterion_cpf.clone())],
                        false,
                    )
                    .await
                    .map_err(|e| e.for_key("criterion_field"))?
            }
        };
        let results = self
            .browser
            .click(
                &page,
                Click::Button(&self.cfg.search_button),
                &[(&self.cfg.search_field, cpf.formatted())],
                false,
            )
            .await
            .map_err(|e| e.for_key("search_button"))?;
        let links: Vec<QuotaLink> = results
            .postback_links(&self.cfg.quota_link)
            .into_iter()
            .filter(|l| l.text.chars().any(|c| c.is_ascii_digit()))
            .filter_map(|l| {
                Some(QuotaLink {
                    target: l.target.clone()?,
                    label: l.text.clone(),
                })
            })
            .collect();
        if links.is_empty() {
            // Not a client only when the portal says so: a renamed grid or link must not pass
            // for an unknown CPF.
            if let Some(rows) = results
                .grid(&self.cfg.results_grid)
                .filter(|r| !r.is_empty())
            {
                return Err(PortalError::Unexpected(format!(
                    "the result grid `{}` has {} row(s) but no `{}` link: the portal changed; check `[canopus] quota_link`",
                    self.cfg.results_grid,
                    rows.len(),
                    self.cfg.quota_link
                )));
            }
            if !results.says(&self.cfg.not_found_text) {
                return Err(PortalError::Unexpected(format!(
                    "the search answer has neither the result grid `{}` nor the message `{}`: the portal changed; check `[canopus] results_grid` and `not_found_text`",
                    self.cfg.results_grid, self.cfg.not_found_text
                )));
            }
        }
        self.search_page = Some(results);
        Ok(links)
    }

    /// Opens a quota of the last search of `cpf`, checks that the portal is on that client,
    /// then opens its boleto page; returns the page and its rows.
    pub async fn open_boletos(
        &mut self,
        cpf: &Cpf,
        quota: &QuotaLink,
    ) -> Result<(Page, Vec<BoletoRow>), PortalError> {
        self.step = "open quota";
        let search = self
            .search_page
            .clone()
            .ok_or_else(|| PortalError::Unexpected("no search page to open a quota from".into()))?;
        let client = self
            .browser
            .click(&search, Click::Postback(&quota.target), &[], false)
            .await?;
        self.check_client(&client, cpf, &quota.label)?;
        self.step = "boletos";
        let page = self
            .browser
            .get(self.browser.url(&self.cfg.boletos_path)?, false)
            .await?;
        let rows = match page.grid(&self.cfg.boletos_grid) {
            None if page.says(&self.cfg.no_boleto_text) => Vec::new(),
            None => {
                return Err(PortalError::Unexpected(format!(
                    "the boleto page has neither the grid `{}` nor the message `{}`: the portal changed; check `[canopus] boletos_grid` and `no_boleto_text`",
                    self.cfg.boletos_grid, self.cfg.no_boleto_text
                )));
            }
            Some(grid) => {
                let rows: Vec<BoletoRow> = grid.iter().filter_map(|r| self.boleto_row(r)).collect();
                if rows.len() < grid.len() {
                    return Err(PortalError::Unexpected(format!(
                        "{} row(s) of the boleto grid `{}` have no due date or no `{}` button: the portal changed; check `[canopus] emit_image`",
                        grid.len() - rows.len(),
                        self.cfg.boletos_grid,
                        self.cfg.emit_image
                    )));
                }
                rows
            }
        };
        Ok((page, rows))
    }

    /// The page a quota link answered must be that client's: not the search page again (the
    /// link was not taken, the session is still on the previous client), and showing the CPF
    /// searched. Nothing of a quota is downloaded before this holds.
    fn check_client(&self, page: &Page, cpf: &Cpf, quota: &str) -> Result<(), PortalError> {
        let back_on_search =
            page.says(&self.cfg.not_selected_text) || page.grid(&self.cfg.results_grid).is_some();
        if back_on_search {
            let said = if page.says(&self.cfg.not_selected_text) {
                format!(" (`{}`)", self.cfg.not_selected_text)
            } else {
                String::new()
            };
            return Err(PortalError::Unexpected(format!(
                "the portal did not open quota `{quota}`: it answered the search page again{said}, so it may still be on another client; nothing was saved for this quota"
            )));
        }
        let id = &self.cfg.client_cpf_id;
        let text = if id.is_empty() {
            Some(page.text())
        } else {
            page.text_by_id(id)
        };
        let shown = text.map(cpfs_in).unwrap_or_default();
        if shown.iter().any(|d| d == cpf.digits()) {
            return Ok(());
        }
        let what = match (text, shown.is_empty()) {
            (None, _) => format!(
                "it has no element `{id}`: the portal changed; check `[canopus] client_cpf_id`"
            ),
            (Some(_), true) if id.is_empty() => "it shows no CPF (if the portal shows it in an element, set `[canopus] client_cpf_id`)".to_string(),
            (Some(_), true) => format!("`{id}` shows no CPF"),
            (Some(_), false) => format!(
                "it shows {}",
                shown
                    .iter()
                    .map(|d| format!("`{}`", mask_digits(d)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(PortalError::Unexpected(format!(
            "the client page opened for quota `{quota}` does not show the CPF searched (`{}`); {what}; nothing was saved for this quota",
            cpf.masked()
        )))
    }

    fn boleto_row(&self, row: &super::webforms::GridRow) -> Option<BoletoRow> {
        let image = row
            .images
            .iter()
            .find(|n| n.contains(&self.cfg.emit_image))?
            .clone();
        let due = row
            .cells
            .iter()
            .find_map(|c| NaiveDate::parse_from_str(c.trim(), "%d/%m/%Y").ok())?;
        let value_centavos = row
            .cells
            .iter()
            .find(|c| c.contains("R$"))
            .and_then(|c| money::parse_brl(c).ok());
        let linha = row.cells.iter().find_map(|c| {
            let digits: String = c.chars().filter(char::is_ascii_digit).collect();
            let only_digits = c
                .chars()
                .all(|ch| ch.is_ascii_digit() || " .-".contains(ch));
            (digits.len() == 47 && only_digits).then_some(digits)
        });
        Some(BoletoRow {
            image,
            due,
            value_centavos,
            linha,
        })
    }

    /// Emits the boleto of `row` on `page` and downloads it: the image button, then the emit
    /// button, then the print window (an HTML wrapper labelled PDF), then the real file. The
    /// bytes must begin with `%PDF-`.
    pub async fn emit(
        &mut self,
        page: &Page,
        row: &BoletoRow,
        today: NaiveDate,
    ) -> Result<Vec<u8>, PortalError> {
        self.step = "choose installment";
        let selected = self
            .browser
            .click(page, Click::Image(&row.image), &[], false)
            .await?;
        self.step = "emit";
        let emitted = self
            .browser
            .click(
                &selected,
                Click::Button(&self.cfg.emit_button),
                &[
                    (&self.cfg.date_field, today.format("%d/%m/%Y").to_string()),
                    (&self.cfg.kind_field, self.cfg.kind_value.clone()),
                ],
                false,
            )
            .await
            .map_err(|e| e.for_key("emit_button"))?;
        let link = emitted.window_open().ok_or_else(|| {
            let message = emitted.text_by_id("lblErro").unwrap_or_default();
            PortalError::Unexpected(format!(
                "emitting gave no print window{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(" (the portal says: {message})")
                }
            ))
        })?;
        self.step = "print window";
        let (url, body) = self.browser.bytes(emitted.join(link)?).await?;
        if body.starts_with(b"%PDF-") {
            return Ok(body);
        }
        // Labelled a PDF, but an HTML wrapper: follow its embed to the real file.
        let wrapper = Page::new(url, String::from_utf8_lossy(&body).into_owned());
        let src = wrapper.embed_src().ok_or_else(|| {
            PortalError::Unexpected(format!(
                "the print window `{}` is neither a PDF nor a page embedding one",
                wrapper.url.path()
            ))
        })?;
        self.step = "boleto file";
        let (url, pdf) = self.browser.bytes(wrapper.join(src)?).await?;
        if !pdf.starts_with(b"%PDF-") {
            let start: String = String::from_utf8_lossy(&pdf[..pdf.len().min(20)])
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            return Err(PortalError::Unexpected(format!(
                "the boleto file `{}` is not a PDF ({} bytes starting with `{start}`); nothing was saved",
                url.path(),
                pdf.len()
            )));
        }
        Ok(pdf)
    }
}

/// The 11-digit numbers a text shows, written with or without the CPF's dots and dash.
fn cpfs_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .map(|t| t.chars().filter(char::is_ascii_digit).collect::<String>())
        .filter(|d| d.len() == 11)
        .collect()
}

/// `708.***.***-36` for any 11 digits (a CPF shown by a page need not be valid).
fn mask_digits(d: &str) -> String {
    format!("{}.***.***-{}", &d[..3], &d[9..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpfs_are_found_formatted_or_not() {
        assert_eq!(
            cpfs_in("Nome: ANA CPF/CNPJ: 708.990.571-36 Grupo 001234/0567"),
            vec!["70899057136"]
        );
        assert_eq!(cpfs_in("CPF 70899057136."), vec!["70899057136"]);
        assert!(cpfs_in("10/11/2025 R$ 512,34 001234/0567").is_empty());
        assert_eq!(mask_digits("70899057136"), "708.***.***-36");
    }
}
