//! The steps an operator takes on the Canopus portal, one method each: log in, search a CPF,
//! open a quota, list its boletos, emit one and download it. Control names and paths come from
//! `[canopus]`.

use std::time::Duration;

use chrono::NaiveDate;

use super::webforms::{Browser, Click, Page, PortalError};
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
}

impl Portal {
    pub fn new(cfg: &CanopusConfig, base_url: &str) -> anyhow::Result<Portal> {
        Ok(Portal {
            browser: Browser::new(
                base_url,
                &cfg.login_path,
                Duration::from_secs(cfg.timeout_secs),
            )?,
            cfg: cfg.clone(),
            search_page: None,
        })
    }

    /// Requests sent by this session.
    pub fn requests(&self) -> u64 {
        self.browser.requests()
    }

    /// Logs in with the user code (padded with zeros) and password.
    pub async fn login(&mut self, user_code: &str, password: &str) -> Result<(), PortalError> {
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
            .await?;
        if after
            .url
            .path()
            .to_ascii_lowercase()
            .ends_with(&self.cfg.login_path.to_ascii_lowercase())
        {
            let message = after
                .text_by_id(&self.cfg.login_message_id)
                .unwrap_or_else(|| "the portal stayed on its login page".into());
            return Err(PortalError::LoginFailed(message));
        }
        Ok(())
    }

    /// Searches a CPF; no link means the CPF is not a client.
    pub async fn search(&mut self, cpf: &Cpf) -> Result<Vec<QuotaLink>, PortalError> {
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
                    .await?
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
            .await?;
        let links: Vec<QuotaLink> = results
            .postback_links(&self.cfg.quota_link)
            .into_iter()
            .map(|l| QuotaLink {
                target: l.target,
                label: l.text,
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
            if !results.html.contains(&self.cfg.not_found_text) {
                return Err(PortalError::Unexpected(format!(
                    "the search answer has neither the result grid `{}` nor the message `{}`: the portal changed; check `[canopus] results_grid` and `not_found_text`",
                    self.cfg.results_grid, self.cfg.not_found_text
                )));
            }
        }
        self.search_page = Some(results);
        Ok(links)
    }

    /// Opens a quota of the last search, then its boleto page; returns the page and its rows.
    pub async fn open_boletos(
        &mut self,
        quota: &QuotaLink,
    ) -> Result<(Page, Vec<BoletoRow>), PortalError> {
        let search = self
            .search_page
            .clone()
            .ok_or_else(|| PortalError::Unexpected("no search page to open a quota from".into()))?;
        self.browser
            .click(&search, Click::Postback(&quota.target), &[], false)
            .await?;
        let page = self
            .browser
            .get(self.browser.url(&self.cfg.boletos_path)?, false)
            .await?;
        let rows = match page.grid(&self.cfg.boletos_grid) {
            None if page.html.contains(&self.cfg.no_boleto_text) => Vec::new(),
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
        let selected = self
            .browser
            .click(page, Click::Image(&row.image), &[], false)
            .await?;
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
            .await?;
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
        let (url, body) = self.browser.bytes(emitted.join(&link)?).await?;
        if body.starts_with(b"%PDF-") {
            return Ok(body);
        }
        // Labelled a PDF, but an HTML wrapper: follow its embed to the real file.
        let wrapper = Page {
            url,
            html: String::from_utf8_lossy(&body).into_owned(),
        };
        let src = wrapper.embed_src().ok_or_else(|| {
            PortalError::Unexpected(format!(
                "the print window `{}` is neither a PDF nor a page embedding one",
                wrapper.url.path()
            ))
        })?;
        let (url, pdf) = self.browser.bytes(wrapper.join(&src)?).await?;
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
